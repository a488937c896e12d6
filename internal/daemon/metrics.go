package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/version"
)

// metrics are the daemon's Prometheus series; every one carries the cluster label, so
// one Prometheus can watch a fleet.
type metrics struct {
	reg             *prometheus.Registry
	lastSuccess     prometheus.Gauge
	age             prometheus.Gauge
	duration        prometheus.Observer
	sizeRaw         prometheus.Gauge
	sizeStored      prometheus.Gauge
	failures        *prometheus.CounterVec
	stored          prometheus.Gauge
	retentionDelete prometheus.Counter
	isLeader        prometheus.Gauge
	deltaRevision   prometheus.Gauge
	deltaLag        prometheus.Gauge
	deltaSegments   prometheus.Counter
	// deltaInterruptions counts capture interruptions: "compacted" lost revisions,
	// "failing" ones are retried without loss.
	deltaInterruptions *prometheus.CounterVec
	// What the alerts of deploy/prometheus-rule.yaml compare, so they follow the daemon's
	// own conditions (alerting.Catalog) rather than copies of its flags.
	failingInARow       prometheus.Gauge
	storeUp             prometheus.Gauge
	everStored          prometheus.Gauge
	deltaCaptureFailing prometheus.Gauge
	maxAge, warnAge     prometheus.Gauge
	alertAfter          prometheus.Gauge
}

func newMetrics(cluster string) *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	l := prometheus.Labels{"cluster": cluster}
	f := func(name, help string) prometheus.GaugeOpts {
		return prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: l}
	}
	m := &metrics{reg: reg}
	m.lastSuccess = prometheus.NewGauge(f("etcdguard_snapshot_last_success_timestamp_seconds", "Start time of the newest snapshot in the store."))
	m.age = prometheus.NewGauge(f("etcdguard_snapshot_age_seconds", "Age of the newest snapshot in the store (-1: none)."))
	hist := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "etcdguard_snapshot_duration_seconds", Help: "Duration of snapshot saves by this daemon.",
		ConstLabels: l, Buckets: prometheus.ExponentialBuckets(0.5, 2, 12)})
	m.duration = hist
	size := prometheus.NewGaugeVec(f("etcdguard_snapshot_size_bytes", "Size of the last snapshot this daemon saved: raw (etcd's) and stored (compressed)."), []string{"kind"})
	m.sizeRaw, m.sizeStored = size.WithLabelValues("raw"), size.WithLabelValues("stored")
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "etcdguard_snapshot_failures_total", Help: "Failed snapshot runs, by reason.", ConstLabels: l}, []string{"reason"})
	m.stored = prometheus.NewGauge(f("etcdguard_snapshots_stored", "Snapshots of the cluster in the store."))
	m.retentionDelete = prometheus.NewCounter(prometheus.CounterOpts{Name: "etcdguard_retention_deleted_total", Help: "Snapshots deleted by retention.", ConstLabels: l})
	m.isLeader = prometheus.NewGauge(f("etcdguard_is_leader", "1 if this daemon is the one that takes snapshots."))
	m.deltaRevision = prometheus.NewGauge(f("etcdguard_delta_last_revision", "Last etcd revision stored in a delta segment."))
	m.deltaLag = prometheus.NewGauge(f("etcdguard_delta_lag_seconds", "Age of the oldest captured change not yet stored (the delta RPO)."))
	m.deltaSegments = prometheus.NewCounter(prometheus.CounterOpts{Name: "etcdguard_delta_segments_total", Help: "Delta segments written.", ConstLabels: l})
	m.deltaInterruptions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "etcdguard_delta_interruptions_total",
		Help: "Delta capture interruptions: compacted (etcd compacted revisions before they were captured; a full snapshot bridged them), new_history (etcd was restored: a new timeline started with a full snapshot, nothing lost) or failing (watch or store errors, retried).", ConstLabels: l}, []string{"reason"})
	m.failingInARow = prometheus.NewGauge(f("etcdguard_snapshot_failures_in_a_row", "Snapshot runs by this daemon that failed in a row (0 after a successful one)."))
	m.storeUp = prometheus.NewGauge(f("etcdguard_store_up", "1 if this daemon's last read of the store succeeded, 0 if it failed."))
	m.everStored = prometheus.NewGauge(f("etcdguard_snapshots_ever_stored", "1 if the store has held a snapshot of the cluster (it records the first), 0 for a cluster never backed up."))
	m.deltaCaptureFailing = prometheus.NewGauge(f("etcdguard_delta_capture_failing", "1 while delta capture fails to store changes (it retries), 0 otherwise."))
	m.maxAge = prometheus.NewGauge(f("etcdguard_config_max_age_seconds", "--max-age: the newest snapshot older than this is critical."))
	m.warnAge = prometheus.NewGauge(f("etcdguard_config_warn_age_seconds", "--warn-age: the newest snapshot older than this is a warning (0: no warning level)."))
	m.alertAfter = prometheus.NewGauge(f("etcdguard_config_alert_after_failures", "--alert-after-failures: failed snapshot runs in a row that raise EtcdSnapshotFailing."))
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "etcdguard_build_info", Help: "etcdguard's version.",
		ConstLabels: prometheus.Labels{"cluster": cluster, "version": version.String()}})
	build.Set(1)
	m.age.Set(-1)
	for _, reason := range []string{"etcd", "store", "verify", "retention", "encryption"} {
		m.failures.WithLabelValues(reason) // export zeros, so rate() works from the start
	}
	for _, reason := range []string{"compacted", "failing"} {
		m.deltaInterruptions.WithLabelValues(reason)
	}
	reg.MustRegister(m.lastSuccess, m.age, hist, size, m.failures, m.stored, m.retentionDelete, m.isLeader, m.deltaRevision, m.deltaLag, m.deltaSegments, m.deltaInterruptions, build,
		m.failingInARow, m.storeUp, m.everStored, m.deltaCaptureFailing, m.maxAge, m.warnAge, m.alertAfter)
	return m
}

// setThresholds exports the daemon's alert thresholds, which the PrometheusRule compares with.
func (m *metrics) setThresholds(p alerting.Policy, alertAfter int) {
	m.maxAge.Set(p.MaxAge.Seconds())
	m.warnAge.Set(p.WarnAge.Seconds())
	m.alertAfter.Set(float64(alertAfter))
}
