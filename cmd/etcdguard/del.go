package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/guard"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
	"github.com/etcdguard/etcdguard/store"
)

type delOptions struct {
	prefix, fromKey bool
	dryRun          bool
	confirm         string
	acceptWarnings  bool
	maxKeys         int64
	planTTL         time.Duration
}

func newDelCommand(g *globalOptions) *cobra.Command {
	o := &delOptions{}
	cmd := &cobra.Command{
		Use:   "del KEY [RANGE_END] [--prefix|--from-key] (--dry-run | --confirm PLAN_ID)",
		Short: "Delete keys as etcdctl del does, but only as a planned, confirmed, saved and audited delete",
		Long: `The arguments mean what they mean to etcdctl del. --dry-run shows the exact range, what is
in it and any warnings, and stores a plan; --confirm PLAN_ID deletes exactly that, only if
nothing in the range changed since, after saving every key and value (undo with
"etcdguard guard undo PLAN_ID"). Without either, nothing is deleted.`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDel(cmd.Context(), g, o, args)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.prefix, "prefix", false, "delete the keys with KEY as prefix")
	f.BoolVar(&o.fromKey, "from-key", false, "delete the keys from KEY on (byte order)")
	f.BoolVar(&o.dryRun, "dry-run", false, "show what would be deleted and store a plan; deletes nothing")
	f.StringVar(&o.confirm, "confirm", "", "execute the plan with this id")
	f.BoolVar(&o.acceptWarnings, "accept-warnings", false, "confirm a plan that has warnings")
	f.Int64Var(&o.maxKeys, "max-keys", 1000, "warn when the range holds more keys than this")
	f.DurationVar(&o.planTTL, "plan-ttl", 15*time.Minute, "how long a plan can be confirmed")
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		hint := ""
		if strings.Contains(err.Error(), "'r'") || strings.Contains(err.Error(), "--range") {
			hint = "; etcdctl v3 has no -r: for every key under a prefix use --prefix"
		}
		return fmt.Errorf("%w%s (see `%s --help`)", err, hint, cmd.CommandPath())
	})
	return cmd
}

func runDel(ctx context.Context, g *globalOptions, o *delOptions, args []string) error {
	var r *guard.Range
	if len(args) > 0 {
		rr, err := guard.Interpret(args, o.prefix, o.fromKey)
		if err != nil {
			return err
		}
		r = &rr
	}
	switch {
	case o.dryRun && o.confirm != "":
		return errors.New("--dry-run and --confirm exclude each other: plan first, then confirm the plan")
	case !o.dryRun && o.confirm == "":
		if r == nil {
			return errors.New("del needs a key: del KEY [RANGE_END] [--prefix|--from-key] --dry-run")
		}
		return &exitError{code: exitRefused, err: fmt.Errorf("refusing to delete %s without a plan; nothing was deleted: run `etcdguard del %s --dry-run`, read it, then `etcdguard del --confirm PLAN_ID`",
			r, strings.Join(quoteArgs(args, o), " "))}
	case o.dryRun && r == nil:
		return errors.New("--dry-run needs a key: del KEY [RANGE_END] [--prefix|--from-key] --dry-run")
	}
	g.limitMemory()
	st, cli, cluster, etcdUser, err := g.guardSession(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()

	if o.dryRun {
		p, err := guard.MakePlan(ctx, cli, st, *r, guard.PlanOptions{Cluster: cluster, MaxKeys: o.maxKeys, TTL: o.planTTL, EtcdUser: etcdUser})
		if err != nil {
			return g.etcd.Denied(err, "reading "+r.String(), "planning needs a role with read permission on the range")
		}
		if g.output == "json" {
			return printJSON(g.stdout, p)
		}
		return printPlan(g, p)
	}

	p, err := guard.LoadPlan(ctx, st, cluster, o.confirm)
	if err != nil {
		return err
	}
	if isTerminal(os.Stdin) && (len(p.Warnings) == 0 || o.acceptWarnings) {
		if err := askKeyCount(g, p); err != nil {
			return err
		}
	}
	ex, err := guard.Confirm(ctx, cli, st, o.confirm, guard.ConfirmOptions{Cluster: cluster, AcceptWarnings: o.acceptWarnings, Range: r, EtcdUser: etcdUser})
	if err != nil {
		return g.etcd.Denied(err, "the delete of "+p.Range.String(), "a confirm needs a role with readwrite permission on the range and on "+guard.RecordPrefix(cluster)+" (where its delete records itself)")
	}
	if g.output == "json" {
		return printJSON(g.stdout, ex)
	}
	fmt.Fprintf(g.stdout, "deleted %d keys in %s at revision %d (plan %s)\nevery deleted key and value is saved in %s; to put them back: etcdguard guard undo %s\n",
		ex.Deleted, p.Range, ex.Revision, ex.PlanID, ex.SavedTo, ex.PlanID)
	if ex.DeletedByOthers > 0 {
		fmt.Fprintf(g.stdout, "%d planned keys were deleted by someone else while confirming; they are not saved, and undo will not recreate them\n", ex.DeletedByOthers)
	}
	return nil
}

// askKeyCount makes an operator at a terminal type the number of keys, so a confirm is a
// decision about this plan and not a pasted command.
func askKeyCount(g *globalOptions, p *guard.Plan) error {
	fmt.Fprintf(g.stderr, "plan %s deletes %d keys in %s.\ntype the number of keys to delete them: ", p.ID, p.KeyCount, p.Range)
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if strings.TrimSpace(line) != strconv.FormatInt(p.KeyCount, 10) {
		return fmt.Errorf("%w: you typed %q, the plan has %d keys; nothing was deleted", guard.ErrRefused, strings.TrimSpace(line), p.KeyCount)
	}
	return nil
}

func quoteArgs(args []string, o *delOptions) []string {
	out := make([]string, 0, len(args)+1)
	for _, a := range args {
		out = append(out, strconv.Quote(a))
	}
	if o.prefix {
		out = append(out, "--prefix")
	}
	if o.fromKey {
		out = append(out, "--from-key")
	}
	return out
}

func printPlan(g *globalOptions, p *guard.Plan) error {
	w := g.stdout
	rows := [][]string{
		{"plan:", fmt.Sprintf("%s (cluster %s, expires %s)", p.ID, p.Cluster, p.ExpiresAt.Format(time.RFC3339))},
		{"range:", fmt.Sprintf("%s, from the %s", p.Range, p.Range.DerivedFrom)},
		{"revision:", fmt.Sprint(p.Revision)},
		{"keys:", fmt.Sprintf("%d (%s of values)", p.KeyCount, humanBytes(p.ValueBytes))},
		{"first key:", strconv.Quote(p.FirstKey)},
		{"last key:", strconv.Quote(p.LastKey)},
	}
	for i, t := range topByType(p.ByType) {
		label := ""
		if i == 0 {
			label = "by type:"
		}
		rows = append(rows, []string{label, t})
	}
	for i, k := range p.Sample {
		label := ""
		if i == 0 {
			label = "sample:"
		}
		rows = append(rows, []string{label, strconv.Quote(k)})
	}
	if err := table(w, rows); err != nil {
		return err
	}
	for _, warn := range p.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", warn)
	}
	accept := ""
	if len(p.Warnings) > 0 {
		accept = " --accept-warnings"
	}
	fmt.Fprintf(w, "\nnothing was deleted. To delete exactly these %d keys: etcdguard del --confirm %s%s\n", p.KeyCount, p.ID, accept)
	return nil
}

func topByType(by map[string]int64) []string {
	out := make([]string, 0, len(by))
	for t, n := range by {
		out = append(out, fmt.Sprintf("%8d  %s", n, t))
	}
	// counts are right-aligned, so a reverse string sort puts the largest first
	slices.Sort(out)
	slices.Reverse(out)
	return out
}

// guardSession opens what guarded deletes and undos work with: the store, an etcd client
// (closed by the caller), the cluster name, and the etcd user for audit records.
func (g *globalOptions) guardSession(ctx context.Context) (store.Store, *clientv3.Client, string, string, error) {
	st, err := g.openStore(ctx)
	if err != nil {
		return nil, nil, "", "", err
	}
	cli, err := etcdclient.New(ctx, g.etcd)
	if err != nil {
		return nil, nil, "", "", err
	}
	cluster, err := g.etcdCluster(ctx, cli)
	if err != nil {
		cli.Close()
		return nil, nil, "", "", err
	}
	return st, cli, cluster, g.etcd.UserName(), nil
}

// clusterName is --cluster, or etcd's cluster ID in hex asked of etcd, for commands that
// otherwise do not need an etcd connection.
func (g *globalOptions) clusterName(ctx context.Context) (string, error) {
	if g.cluster != "" {
		return g.cluster, nil
	}
	cli, err := etcdclient.New(ctx, g.etcd)
	if err != nil {
		return "", fmt.Errorf("%w (or name the cluster with --cluster)", err)
	}
	defer cli.Close()
	return g.etcdCluster(ctx, cli)
}

// etcdCluster is --cluster, or etcd's cluster ID in hex.
func (g *globalOptions) etcdCluster(ctx context.Context, cli *clientv3.Client) (string, error) {
	if g.cluster != "" {
		return g.cluster, nil
	}
	// Status, unlike a read, needs no permission beyond being authenticated.
	resp, err := cli.Status(ctx, cli.Endpoints()[0])
	if err != nil {
		return "", fmt.Errorf("reading etcd's cluster id: %w", err)
	}
	return g.clusterFor(resp.Header.ClusterId), nil
}
