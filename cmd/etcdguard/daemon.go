package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/daemon"
	"github.com/etcdguard/etcdguard/store"
)

func newDaemonCommand(g *globalOptions) *cobra.Command {
	cfg := daemon.Config{}
	save := &saveOptions{}
	hooks := &alertFlags{}
	var deltaMax string
	var prune, catchUp bool
	cmd := &cobra.Command{
		Use:   "daemon --schedule CRON --cluster NAME --store URL [--listen :9479]",
		Short: "Take scheduled snapshots (one elected member uploads), verify, prune, watch their age, serve /metrics",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Notifiers = hooks.notifiers()
			n, err := parseSize(deltaMax)
			if err != nil {
				return fmt.Errorf("invalid --delta-max-bytes: %w", err)
			}
			cfg.DeltaMaxBytes = int(n)
			cfg.NoPrune, cfg.NoCatchUp = !prune, !catchUp
			return runDaemon(cmd.Context(), g, cfg, save)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Schedule, "schedule", "0 */1 * * *", "when to snapshot: cron with 5 fields or 6 (seconds first), or @every 30s, @hourly")
	f.DurationVar(&cfg.Policy.MaxAge, "max-age", 5*time.Hour, "the newest snapshot older than this is critical")
	f.DurationVar(&cfg.Policy.WarnAge, "warn-age", 0, "the newest snapshot older than this is a warning (0: none)")
	f.StringVar(&cfg.Listen, "listen", ":9479", "address for /metrics, /healthz and /readyz (empty: none); 9479 clashes with no Prometheus, Alertmanager, node-exporter or kubeadm port")
	f.BoolVar(&cfg.Verify, "verify", false, "stream every new snapshot back and verify it")
	f.DurationVar(&cfg.ElectionTTL, "election-ttl", 15*time.Second, "how soon another daemon takes over from a dead leader")
	f.DurationVar(&cfg.CheckInterval, "check-interval", time.Minute, "how often every daemon evaluates snapshot age")
	f.StringSliceVar(&hooks.webhooks, "alert-webhook", nil, "POST alerts as JSON to this URL (repeatable)")
	f.StringSliceVar(&hooks.slack, "alert-slack-webhook", nil, "Slack incoming webhook URL (repeatable; it holds a token: prefer ETCDGUARD_ALERT_SLACK_WEBHOOK or the config file)")
	f.StringSliceVar(&hooks.alertmanagers, "alert-alertmanager", nil, "Alertmanager base URL, e.g. http://alertmanager:9093 (repeatable)")
	f.DurationVar(&cfg.AlertRepeat, "alert-repeat", time.Hour, "remind webhook and Slack receivers of a firing alert this often (not Alertmanager: its repeat_interval does)")
	f.DurationVar(&cfg.AlertResend, "alert-alertmanager-resend", time.Minute, "re-send firing alerts to Alertmanager this often, each valid for 4 times this (1s to 3m)")
	f.IntVar(&cfg.AlertAfter, "alert-after-failures", 3, "alert when this many snapshot runs in a row failed")
	f.BoolVar(&cfg.Delta, "delta", false, "capture every change between snapshots as delta segments (point-in-time restore); the leader captures")
	f.DurationVar(&cfg.DeltaFlush, "delta-flush", 5*time.Second, "store captured changes at least this often (the delta RPO)")
	f.StringVar(&deltaMax, "delta-max-bytes", "16MiB", "store a delta segment sooner once this much is buffered")
	addSaveFlags(cmd, save)
	addRetentionFlags(cmd, &cfg.Retention)
	f.BoolVar(&catchUp, "catch-up", true, "when elected, snapshot at once if a tick of --schedule fell after the newest snapshot (the last leader died during its run, or none led at the tick) or there is none; with --verify, first verify a newest snapshot nobody verified")
	f.BoolVar(&prune, "prune", true, "apply the retention policy after each snapshot and abort stale uploads; false lets the daemon run without delete rights (see deploy/security.md) while `etcdguard snapshot prune` runs elsewhere")
	return cmd
}

func runDaemon(ctx context.Context, g *globalOptions, cfg daemon.Config, save *saveOptions) error {
	if _, err := daemon.ParseSchedule(cfg.Schedule); err != nil {
		return err // before connecting anywhere
	}
	if err := daemon.CheckAlertResend(cfg.AlertResend); err != nil {
		return err
	}
	g.limitMemory()
	st, err := g.openStore(ctx)
	if errors.Is(err, store.ErrInvalid) {
		return err
	}
	if cfg.Verify && g.recipients != nil && g.identities == nil {
		return errors.New("--verify reads every snapshot back, and they are encrypted (--encrypt-recipient): it needs --identity-file, which puts the private key on every master; better verify elsewhere with `etcdguard snapshot verify --identity-file` and drop --verify here")
	}
	if err != nil {
		slog.Error("cannot open the store; the daemon runs anyway and retries at each use: /metrics says etcdguard_store_up 0 and EtcdguardStoreUnreachable fires after 10m",
			"store", store.Redact(g.storeURL), "err", err)
		st = g.wrapStore(store.Lazy(store.Redact(g.storeURL), g.openBackend))
	}
	cfg.Store, cfg.Etcd = st, g.etcd
	cfg.Save.Compression, cfg.Save.Level, cfg.Save.StaleUploadAge = save.compression, save.level, save.staleUploadAge
	cfg.Save.StallTimeout = g.etcd.CommandTimeout
	if cfg.NoPrune {
		// Aborting needs s3:AbortMultipartUpload, which a role without delete rights lacks;
		// the pruner's run and the bucket's lifecycle rule (deploy/s3-lifecycle.json) do it.
		cfg.Save.StaleUploadAge = 0
		slog.Info("retention is off (--prune=false): run `etcdguard snapshot prune` with a role that may delete, e.g. from a CronJob or systemd timer")
	}
	if cfg.Cluster, err = g.clusterName(ctx); err != nil {
		return err
	}
	d, err := daemon.New(cfg)
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

type alertFlags struct{ webhooks, slack, alertmanagers []string }

func (a *alertFlags) notifiers() []alerting.Notifier {
	var out []alerting.Notifier
	for _, u := range a.webhooks {
		out = append(out, alerting.Webhook{URL: u})
	}
	for _, u := range a.slack {
		out = append(out, alerting.Slack{URL: u})
	}
	for _, u := range a.alertmanagers {
		out = append(out, alerting.Alertmanager{URL: u})
	}
	return out
}
