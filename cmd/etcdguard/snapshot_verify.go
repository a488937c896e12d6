package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/snapshot"
)

func newSnapshotVerifyCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "verify ID|latest",
		Short: "Stream a snapshot back and check its size, sha256, etcd's trailer and revision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotVerify(cmd.Context(), g, args[0])
		},
	}
}

func runSnapshotVerify(ctx context.Context, g *globalOptions, id string) error {
	st, cluster, err := g.storeAndCluster(ctx)
	if err != nil {
		return err
	}
	m, err := snapshot.Find(ctx, st, cluster, id)
	if err != nil {
		return err
	}
	rep, err := snapshot.Verify(ctx, st, m)
	if err != nil {
		return err
	}
	// Retention always keeps the newest snapshot that verified; one that failed is never
	// restored, kept or counted as fresh.
	if err := snapshot.RecordVerification(ctx, st, rep); err != nil {
		return fmt.Errorf("snapshot %s verified (ok: %v), but recording that failed: %w", rep.ID, rep.OK, err)
	}
	if g.output == "json" {
		if err := printJSON(g.stdout, rep); err != nil {
			return err
		}
	} else if rep.OK {
		fmt.Fprintf(g.stdout, "OK %s: %s, sha256 %s, revision %d, etcd trailer valid\n",
			rep.ID, humanBytes(rep.DBSize), rep.SHA256, rep.Revision)
	}
	if !rep.OK {
		return &exitError{code: 1, err: errors.New("snapshot " + rep.ID + " FAILED verification: " +
			strings.Join(rep.Problems, "; ") + "; do not restore from it, use another (`etcdguard snapshot list`)")}
	}
	return nil
}
