package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/store"
)

func newTimelineCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "timeline",
		Short: "Show full snapshots, delta coverage and its gaps, and the restorable window",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runTimeline(cmd.Context(), g)
		},
	}
}

// restorable reads the cluster's snapshots and segments and computes the timeline.
func restorable(ctx context.Context, st store.Store, cluster string) ([]delta.Span, []delta.Window, error) {
	stored, err := delta.Load(ctx, st, cluster)
	if err != nil {
		return nil, nil, err
	}
	spans, ws := delta.Timeline(stored)
	return spans, ws, nil
}

func runTimeline(ctx context.Context, g *globalOptions) error {
	st, cluster, err := g.storeAndCluster(ctx)
	if err != nil {
		return err
	}
	spans, ws, err := restorable(ctx, st, cluster)
	if err != nil {
		return err
	}
	if g.output == "json" {
		return printJSON(g.stdout, map[string]any{"cluster": cluster, "spans": spans, "restorable": ws})
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	rows := [][]string{{"KIND", "FROM REV", "TO REV", "FROM", "TO", "DETAIL"}}
	for _, s := range spans {
		from, to := fmt.Sprint(s.FromRev), fmt.Sprint(s.ToRev)
		switch s.Kind {
		case "snapshot":
			from = "-"
		case "history":
			from, to = "-", "-"
			s.Detail = s.History + ": " + s.Detail
		}
		rows = append(rows, []string{s.Kind, from, to, ts(s.FromTime), ts(s.ToTime), s.Detail})
	}
	if err := table(g.stdout, rows); err != nil {
		return err
	}
	printWindows(g, ws)
	return nil
}

func printWindows(g *globalOptions, ws []delta.Window) {
	if len(ws) == 0 {
		fmt.Fprintln(g.stdout, "restorable: nothing (no full snapshot)")
		return
	}
	for _, w := range ws {
		in := ""
		if len(ws) > 1 || w.History != "" {
			in = " in history " + w.History
		}
		fmt.Fprintf(g.stdout, "restorable%s: revisions %d to %d, %s to %s\n", in, w.FirstRev, w.LastRev,
			w.FirstTime.UTC().Format(time.RFC3339), w.LastTime.UTC().Format(time.RFC3339))
	}
}
