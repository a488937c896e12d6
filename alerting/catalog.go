package alerting

import (
	"strings"
	"time"
)

// Severities as kube-prometheus uses them: critical pages someone now, warning is looked
// at in working hours. kube-prometheus-stack's Alertmanager inhibits a warning while a
// critical alert of the same name fires.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"
)

// RunbookBase is the published runbook every alert's runbook_url points into, one
// section per alert name (deploy/runbooks/alerts.md).
const RunbookBase = "https://github.com/etcdguard/etcdguard/blob/main/deploy/runbooks/alerts.md"

// Rule is one alert as etcdguard defines it, whoever raises it: the daemon's own
// notifiers (--alert-*) or Prometheus with deploy/prometheus-rule.yaml. Both use this
// table, so one problem has one name and one severity wherever it comes from; a test
// holds the PrometheusRule to it. Use one of the two per cluster, not both
// (deploy/monitoring/README.md): the same alert from both would page twice.
type Rule struct {
	Name     string
	Severity string
	// Summary is the rule's summary annotation, word for word, and the daemon's; each
	// gives its own description (the daemon's says what it saw).
	Summary string
	// Daemon says whether the daemon raises it itself. EtcdguardDown and EtcdguardNoLeader
	// are about daemons that are gone or idle, and EtcdDeltaLagHigh needs a history of
	// the lag: only Prometheus raises those.
	Daemon bool
	// For is how long the condition must hold before the alert fires: the rule's `for`,
	// and the daemon waits as long, so that a new install (no snapshot before the first
	// scheduled one) or a short store blip pages from neither.
	For time.Duration
}

// RunbookURL is where on-call reads what to do: the alert's section of the runbook (the
// anchor GitHub gives a "## Name" heading).
func (r Rule) RunbookURL() string { return RunbookBase + "#" + strings.ToLower(r.Name) }

// Alert is the daemon's notification of this rule for cluster; description says what it
// saw and what to do.
func (r Rule) Alert(cluster, description string) Alert {
	return Alert{Name: r.Name, Cluster: cluster, Severity: r.Severity, Summary: r.Summary, Description: description, RunbookURL: r.RunbookURL()}
}

// The alerts. EtcdSnapshotTooOld comes at two severities, as kube-prometheus alerts do:
// a warning past --warn-age, critical past --max-age.
var (
	SnapshotTooOld = Rule{Name: "EtcdSnapshotTooOld", Severity: SeverityCritical, Daemon: true,
		Summary: "The newest etcd snapshot is older than --max-age."}
	SnapshotAging = Rule{Name: "EtcdSnapshotTooOld", Severity: SeverityWarning, Daemon: true,
		Summary: "The newest etcd snapshot is older than --warn-age."}
	// SnapshotMissing is a cluster never backed up: a new install has no snapshot until its
	// first scheduled run, hence the wait. SnapshotLost is one whose snapshots were there
	// and are gone or unusable: nothing to wait for, and nothing left to restore from.
	SnapshotMissing = Rule{Name: "EtcdSnapshotMissing", Severity: SeverityCritical, Daemon: true, For: 75 * time.Minute,
		Summary: "The store has no etcd snapshot of the cluster yet."}
	SnapshotLost = Rule{Name: "EtcdSnapshotLost", Severity: SeverityCritical, Daemon: true,
		Summary: "The cluster's etcd snapshots are gone or unusable."}
	SnapshotFailing = Rule{Name: "EtcdSnapshotFailing", Severity: SeverityWarning, Daemon: true,
		Summary: "etcd snapshot runs fail, --alert-after-failures in a row or more."}
	StoreUnreachable = Rule{Name: "EtcdguardStoreUnreachable", Severity: SeverityCritical, Daemon: true, For: 10 * time.Minute,
		Summary: "etcdguard cannot read the snapshot store."}
	DeltaCaptureFailing = Rule{Name: "EtcdDeltaCaptureFailing", Severity: SeverityWarning, Daemon: true, For: time.Minute,
		Summary: "Delta capture stores nothing: point-in-time restore stops at the last stored change."}
	DeltaGap = Rule{Name: "EtcdDeltaGap", Severity: SeverityWarning, Daemon: true,
		Summary: "etcd compacted revisions before etcdguard captured them: points in that gap cannot be restored exactly."}
	DeltaLagHigh = Rule{Name: "EtcdDeltaLagHigh", Severity: SeverityWarning, For: 5 * time.Minute,
		Summary: "Captured etcd changes wait over a minute to be stored: point-in-time restore lags."}
	Down = Rule{Name: "EtcdguardDown", Severity: SeverityCritical, For: 15 * time.Minute,
		Summary: "No etcdguard daemon is scraped: no snapshots are taken and no snapshot alert can fire."}
	NoLeader = Rule{Name: "EtcdguardNoLeader", Severity: SeverityWarning, For: 15 * time.Minute,
		Summary: "etcdguard daemons run but none leads: no snapshots are taken."}
)

// Lookup finds the rule of an alert the daemon raises.
func Lookup(name, severity string) (Rule, bool) {
	for _, r := range Catalog {
		if r.Name == name && r.Severity == severity {
			return r, true
		}
	}
	return Rule{}, false
}

// Catalog is every alert etcdguard defines.
var Catalog = []Rule{SnapshotTooOld, SnapshotAging, SnapshotMissing, SnapshotLost, SnapshotFailing, StoreUnreachable,
	DeltaCaptureFailing, DeltaGap, DeltaLagHigh, Down, NoLeader}
