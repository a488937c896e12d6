package main

import (
	"github.com/spf13/cobra"
)

func newSnapshotCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save, list, verify and prune etcd snapshots in the store",
	}
	cmd.AddCommand(newSnapshotSaveCommand(g), newSnapshotListCommand(g), newSnapshotVerifyCommand(g), newSnapshotPruneCommand(g))
	return cmd
}
