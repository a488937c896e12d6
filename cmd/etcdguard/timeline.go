package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/snapshot"
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
func restorable(ctx context.Context, st store.Store, cluster string) ([]delta.Span, *delta.Window, error) {
	snaps, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return nil, nil, err
	}
	segs, err := delta.List(ctx, st, cluster)
	if err != nil {
		return nil, nil, fmt.Errorf("listing delta segments: %w", err)
	}
	spans, w := delta.Timeline(snaps, segs)
	return spans, w, nil
}

func runTimeline(ctx context.Context, g *globalOptions) error {
	st, cluster, err := g.storeAndCluster(ctx)
	if err != nil {
		return err
	}
	spans, w, err := restorable(ctx, st, cluster)
	if err != nil {
		return err
	}
	if g.output == "json" {
		return printJSON(g.stdout, map[string]any{"cluster": cluster, "spans": spans, "restorable": w})
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	rows := [][]string{{"KIND", "FROM REV", "TO REV", "FROM", "TO", "DETAIL"}}
	for _, s := range spans {
		from := fmt.Sprint(s.FromRev)
		if s.Kind == "snapshot" {
			from = "-"
		}
		rows = append(rows, []string{s.Kind, from, fmt.Sprint(s.ToRev), ts(s.FromTime), ts(s.ToTime), s.Detail})
	}
	if err := table(g.stdout, rows); err != nil {
		return err
	}
	printWindow(g, w)
	return nil
}

func printWindow(g *globalOptions, w *delta.Window) {
	if w == nil {
		fmt.Fprintln(g.stdout, "restorable: nothing (no full snapshot)")
		return
	}
	fmt.Fprintf(g.stdout, "restorable: revisions %d to %d, %s to %s\n", w.FirstRev, w.LastRev,
		w.FirstTime.UTC().Format(time.RFC3339), w.LastTime.UTC().Format(time.RFC3339))
}
