package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/snapshot"
)

type checkOptions struct {
	policy alerting.Policy
	all    bool
}

func newCheckCommand(g *globalOptions) *cobra.Command {
	o := &checkOptions{}
	cmd := &cobra.Command{
		Use:   "check --max-age 5h [--warn-age 3h] [--all-clusters]",
		Short: "Nagios-style check that the newest snapshot is fresh: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCheck(cmd.Context(), g, o)
		},
	}
	cmd.Flags().DurationVar(&o.policy.MaxAge, "max-age", 5*time.Hour, "CRITICAL when the newest snapshot is older")
	cmd.Flags().DurationVar(&o.policy.WarnAge, "warn-age", 0, "WARNING when the newest snapshot is older (0: no warning level)")
	cmd.Flags().BoolVar(&o.all, "all-clusters", false, "check every cluster under the store prefix")
	return cmd
}

func runCheck(ctx context.Context, g *globalOptions, o *checkOptions) error {
	if o.policy.WarnAge >= o.policy.MaxAge && o.policy.WarnAge > 0 {
		return fmt.Errorf("--warn-age %s must be less than --max-age %s", o.policy.WarnAge, o.policy.MaxAge)
	}
	rep := checkReport(ctx, g, o)
	if g.output == "json" {
		if err := printJSON(g.stdout, rep); err != nil {
			return err
		}
	} else {
		for _, c := range rep.Clusters {
			fmt.Fprintf(g.stdout, "%s: cluster %s: %s\n", c.Status, c.Cluster, c.Message)
		}
	}
	if rep.Status == alerting.OK {
		return nil
	}
	return &exitError{code: int(rep.Status)} // the lines above already say why
}

func checkReport(ctx context.Context, g *globalOptions, o *checkOptions) alerting.Report {
	unknown := func(cluster string, err error) alerting.Report {
		return alerting.Report{Status: alerting.Unknown, Clusters: []alerting.Freshness{{Cluster: cluster, Status: alerting.Unknown, Message: err.Error()}}}
	}
	st, err := g.openStore(ctx)
	if err != nil {
		return unknown(cmp.Or(g.cluster, "?"), err)
	}
	now := time.Now()
	if o.all || g.cluster != "" {
		return alerting.Check(ctx, st, []string{g.cluster}, o.all, now, o.policy)
	}
	clusters, err := snapshot.Clusters(ctx, st)
	switch {
	case err != nil:
		return unknown("?", err)
	case len(clusters) > 1:
		return unknown("?", errors.New("the store holds several clusters ("+strings.Join(clusters, ", ")+"): choose one with --cluster, or --all-clusters"))
	case len(clusters) == 0:
		// No cluster at all is the "no backups at all" alert, judged over the whole store.
		return alerting.Check(ctx, st, nil, true, now, o.policy)
	}
	return alerting.Check(ctx, st, clusters, false, now, o.policy)
}
