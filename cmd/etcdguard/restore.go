package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/restore"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

type restoreOptions struct {
	snapshot string
	at       string
	revision int64
	history  string
	members  restore.MemberPlan
	token    string
	bump     uint64
	compact  bool
}

func newRestoreCommand(g *globalOptions) *cobra.Command {
	o := &restoreOptions{}
	cmd := &cobra.Command{
		Use:   "restore (--snapshot ID|latest | --at RFC3339 | --revision N) --initial-cluster ... (--name NAME | --all-members) --data-dir DIR",
		Short: "Verify a stored snapshot and write data dirs for fresh etcd members",
		Long: `Downloads the chosen snapshot, checks its size, sha256, etcd's trailer and revision,
and only then writes each member's data dir with etcd's own restore library, into a
temp dir beside the target that is renamed into place. An existing non-empty data dir
is never touched. Prints the etcd command line to start each member.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRestore(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.snapshot, "snapshot", "", "snapshot id, or latest")
	f.StringVar(&o.at, "at", "", "restore exactly the state at this time (RFC3339, e.g. 2026-01-02T03:04:05Z): the newest snapshot taken at or before it, plus the deltas up to it")
	f.Int64Var(&o.revision, "revision", 0, "restore exactly revision N: the newest snapshot at or below it, plus the deltas up to N")
	f.StringVar(&o.history, "history", "", "with --at or --revision: the history to restore from (see `etcdguard timeline`; needed when a restore without --bump-revision made revisions repeat)")
	f.StringVar(&o.members.InitialCluster, "initial-cluster", "", "the new cluster's members: name=https://host:2380,... (as etcd's flag)")
	f.StringVar(&o.token, "initial-cluster-token", "", "token of the new cluster, the same on every member (default with --all-members or a one-member cluster: a fresh one, so the cluster gets a new ID; required when --name restores one member of several)")
	f.StringVar(&o.members.Name, "name", "", "the member to write (one of --initial-cluster)")
	f.StringSliceVar(&o.members.AdvertiseTo, "initial-advertise-peer-urls", nil, "the member's peer URLs (default: from --initial-cluster)")
	f.StringVar(&o.members.DataDir, "data-dir", "", "the member's data dir (default NAME.etcd); with --all-members, their parent")
	f.StringVar(&o.members.WALDir, "wal-dir", "", "a separate WAL dir for the member")
	f.BoolVar(&o.members.AllMembers, "all-members", false, "write a data dir for every member of --initial-cluster, from one download")
	f.StringVar(&o.members.DataDirTemplate, "data-dir-template", "", "with --all-members: where each member goes, with {name} (default DATA_DIR/{name}.etcd)")
	f.Uint64Var(&o.bump, "bump-revision", 0, "raise the restored revision by N (with --mark-compacted; Kubernetes needs both)")
	f.BoolVar(&o.compact, "mark-compacted", false, "mark every revision before the restored one compacted (with --bump-revision)")
	return cmd
}

func runRestore(ctx context.Context, g *globalOptions, o *restoreOptions) error {
	sel := restore.Selector{ID: o.snapshot, Revision: o.revision, History: o.history}
	if o.at != "" {
		t, err := time.Parse(time.RFC3339, o.at)
		if err != nil {
			return fmt.Errorf("malformed --at %q: want RFC3339 such as 2026-01-02T03:04:05Z", o.at)
		}
		sel.At = t
	}
	members, err := o.members.Members()
	if err != nil {
		return err
	}
	if err := restore.CheckToken(members, o.members.InitialCluster, o.token); err != nil {
		return err
	}
	st, cluster, err := g.storeAndCluster(ctx)
	if err != nil {
		return err
	}
	plan, err := restore.Select(ctx, st, cluster, sel)
	switch {
	case errors.Is(err, store.ErrNotExist) || errors.Is(err, snapshot.ErrNoSnapshots):
		return &exitError{code: exitNotFound, err: err}
	case err != nil:
		return err
	}
	m := plan.Base
	// A point after the chosen snapshot is reached by replaying the captured deltas.
	opts := restore.Options{
		Members: members, InitialCluster: o.members.InitialCluster, Token: o.token,
		BumpRevision: o.bump, MarkCompacted: o.compact,
		Deltas: plan.Deltas, TargetRev: plan.TargetRev, TargetTime: plan.TargetTime,
		Chosen: o.snapshot == "" || o.snapshot == "latest",
	}
	if len(opts.Deltas) == 0 {
		// Not for a replay: etcd's MVCC index holds every key and revision in memory,
		// as etcd itself does, and a soft limit below that only makes the GC spin.
		g.limitMemory()
	}
	res, err := restore.Restore(ctx, st, m, opts)
	if err != nil {
		return err
	}
	if g.output == "json" {
		return printJSON(g.stdout, res)
	}
	return printRestore(g, res, o.bump)
}

func printRestore(g *globalOptions, res *restore.Result, bump uint64) error {
	m := res.Snapshot
	w := g.stdout
	keys := "key count unknown"
	if m.KeyCount != nil {
		keys = fmt.Sprintf("%d keys", *m.KeyCount)
	}
	fmt.Fprintf(w, "restored snapshot %s of cluster %s (taken %s, revision %d, %s) into %d member(s)\n",
		m.ID, m.Cluster, m.CreatedAt.Format(time.RFC3339), m.Revision, keys, len(res.Members))
	if rp := res.Replayed; rp != nil {
		fmt.Fprintf(w, "replayed %d revisions (%d events) from the deltas: the restored state is revision %d, captured at %s, with %d keys\n",
			rp.Revisions, rp.Events, rp.Revision, rp.Time.UTC().Format(time.RFC3339), rp.Keys)
	}
	fmt.Fprintf(w, "cluster token: %s (the restored cluster gets a new cluster ID)\n", res.Token)
	if bump > 0 {
		fmt.Fprintf(w, "revision: %d (bumped by %d; every older revision is compacted)\n", res.Revision, bump)
	}
	rows := [][]string{{"MEMBER", "DATA DIR", "PEER URLS"}}
	for _, mem := range res.Members {
		dir := mem.DataDir
		if mem.WALDir != "" {
			dir += " (wal " + mem.WALDir + ")"
		}
		rows = append(rows, []string{mem.Name, dir, strings.Join(mem.PeerURLs, ",")})
	}
	fmt.Fprintln(w)
	if err := table(w, rows); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nstart each member on its host with these flags (plus its usual client URLs and TLS flags):")
	for _, mem := range res.Members {
		fmt.Fprintf(w, "  %s\n", strings.Join(mem.Command, " "))
	}
	fmt.Fprintln(w, "then check: etcdctl endpoint health --cluster && etcdctl member list -w table")
	return nil
}
