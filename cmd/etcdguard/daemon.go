package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/internal/daemon"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
)

func newDaemonCommand(g *globalOptions) *cobra.Command {
	cfg := daemon.Config{}
	save := &saveOptions{}
	cmd := &cobra.Command{
		Use:   "daemon --schedule CRON --cluster NAME --store URL [--listen :9090]",
		Short: "Take scheduled snapshots (one elected member uploads), verify, prune, watch their age, serve /metrics",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), g, cfg, save)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Schedule, "schedule", "0 */1 * * *", "when to snapshot: cron with 5 fields or 6 (seconds first), or @every 30s, @hourly")
	f.DurationVar(&cfg.Policy.MaxAge, "max-age", 5*time.Hour, "the newest snapshot older than this is critical")
	f.DurationVar(&cfg.Policy.WarnAge, "warn-age", 0, "the newest snapshot older than this is a warning (0: none)")
	f.StringVar(&cfg.Listen, "listen", ":9090", "address for /metrics, /healthz and /readyz (empty: none)")
	f.BoolVar(&cfg.Verify, "verify", false, "stream every new snapshot back and verify it")
	f.DurationVar(&cfg.ElectionTTL, "election-ttl", 15*time.Second, "how soon another daemon takes over from a dead leader")
	f.DurationVar(&cfg.CheckInterval, "check-interval", time.Minute, "how often every daemon evaluates snapshot age")
	addSaveFlags(cmd, save)
	addRetentionFlags(cmd, &cfg.Retention)
	return cmd
}

func runDaemon(ctx context.Context, g *globalOptions, cfg daemon.Config, save *saveOptions) error {
	if _, err := daemon.ParseSchedule(cfg.Schedule); err != nil {
		return err // before connecting anywhere
	}
	g.limitMemory()
	st, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	cfg.Store, cfg.Etcd = st, g.etcd
	cfg.Save.Compression, cfg.Save.Level, cfg.Save.StaleUploadAge = save.compression, save.level, save.staleUploadAge
	cfg.Cluster = g.cluster
	if cfg.Cluster == "" {
		cli, err := etcdclient.New(ctx, g.etcd)
		if err != nil {
			return err
		}
		cfg.Cluster, err = g.etcdCluster(ctx, cli)
		cli.Close()
		if err != nil {
			return err
		}
	}
	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	return d.Run(ctx)
}
