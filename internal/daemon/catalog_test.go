package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/yaml"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// sink is a Notifier that keeps what it is sent.
type sink struct{ alerts []alerting.Alert }

func (s *sink) Notify(_ context.Context, alerts []alerting.Alert) error {
	s.alerts = append(s.alerts, alerts...)
	return nil
}
func (s *sink) String() string { return "sink" }

// unreachable is a store whose listings fail, as a store behind a dead network does.
type unreachable struct{ store.Store }

func (unreachable) List(context.Context, string) ([]store.ObjectInfo, error) {
	return nil, errors.New("dial tcp 10.0.0.9:443: connect: no route to host")
}
func (unreachable) ListAfter(context.Context, string, string, int) ([]store.ObjectInfo, error) {
	return nil, errors.New("dial tcp 10.0.0.9:443: connect: no route to host")
}

func gauge(t *testing.T, d *Daemon, name string) float64 {
	t.Helper()
	families, err := d.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s", name)
	return 0
}

// The daemon's notifications are alerting.Catalog's alerts, at the catalog's severity, and the
// gauges that deploy/prometheus-rule.yaml's rule for the same alert reads say the same: the
// daemon and Prometheus have one name, one severity and one condition for each problem.
func TestAlertsFollowTheCatalog(t *testing.T) {
	put := func(t *testing.T, st store.Store, age time.Duration, failed bool) {
		created := time.Now().Add(-age).UTC()
		m := snapshot.Manifest{ID: created.Format("20060102T150405Z") + "-abcdef", Cluster: "prod", CreatedAt: created}
		m.Object = "prod/snapshots/" + m.ID + ".db"
		b, _ := json.Marshal(m)
		for key, data := range map[string][]byte{m.Object: []byte("x"), "prod/snapshots/" + m.ID + ".json": b} {
			if err := store.PutBytes(context.Background(), st, key, data); err != nil {
				t.Fatal(err)
			}
		}
		if failed {
			rep := &snapshot.VerifyReport{ID: m.ID, Cluster: "prod", Problems: []string{"sha256 mismatch"}}
			if err := snapshot.RecordVerification(context.Background(), st, rep); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name     string
		age      time.Duration // of the one snapshot; 0: none
		unusable bool          // it failed verification
		backedUp bool          // the store records a first snapshot (snapshot.EverStored)
		down     bool          // the store cannot be listed
		failures int           // failed runs in a row
		want     []alerting.Rule
		gauges   map[string]float64
	}{
		{name: "fresh", age: time.Hour, gauges: map[string]float64{"etcdguard_store_up": 1, "etcdguard_snapshot_failures_in_a_row": 0}},
		{name: "no snapshot", want: []alerting.Rule{alerting.SnapshotMissing},
			gauges: map[string]float64{"etcdguard_store_up": 1, "etcdguard_snapshot_last_success_timestamp_seconds": 0}},
		{name: "only unusable snapshots", age: time.Hour, unusable: true, want: []alerting.Rule{alerting.SnapshotLost},
			gauges: map[string]float64{"etcdguard_snapshots_stored": 1, "etcdguard_snapshot_last_success_timestamp_seconds": 0}},
		{name: "snapshots deleted, daemon restarted", backedUp: true, want: []alerting.Rule{alerting.SnapshotLost},
			gauges: map[string]float64{"etcdguard_snapshots_ever_stored": 1, "etcdguard_snapshots_stored": 0}},
		{name: "past warn-age", age: 4 * time.Hour, want: []alerting.Rule{alerting.SnapshotAging}},
		{name: "past max-age", age: 6 * time.Hour, want: []alerting.Rule{alerting.SnapshotTooOld}},
		{name: "store down", down: true, want: []alerting.Rule{alerting.StoreUnreachable}, gauges: map[string]float64{"etcdguard_store_up": 0}},
		{name: "two failures", age: time.Hour, failures: 2, gauges: map[string]float64{"etcdguard_snapshot_failures_in_a_row": 2}},
		{name: "three failures", age: time.Hour, failures: 3, want: []alerting.Rule{alerting.SnapshotFailing},
			gauges: map[string]float64{"etcdguard_snapshot_failures_in_a_row": 3, "etcdguard_config_alert_after_failures": 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, err := file.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var st store.Store = fs
			if tc.age > 0 {
				put(t, fs, tc.age, tc.unusable)
			}
			if tc.backedUp { // what snapshot.Save records at a cluster's first snapshot
				if err := store.PutBytes(context.Background(), fs, "prod/first-snapshot.json", []byte(`{"id":"x"}`)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.down {
				st = unreachable{fs}
			}
			out := &sink{}
			cfg := Config{Cluster: "prod", Store: st, Policy: alerting.Policy{MaxAge: 5 * time.Hour, WarnAge: 3 * time.Hour}, AlertAfter: 3}
			m := newMetrics("prod")
			m.setThresholds(cfg.Policy, cfg.AlertAfter) // as New does
			d := &Daemon{cfg: cfg, m: m, alerter: &alerting.Alerter{Notifiers: []alerting.Notifier{out}, Repeat: time.Hour}, log: slog.Default()}
			d.leader.Store(true) // the leader notifies
			m.isLeader.Set(1)
			for range tc.failures {
				d.fail("etcd", errors.New("etcd unreachable"))
			}
			d.checkOnce(context.Background())
			if len(out.alerts) > 0 && slices.ContainsFunc(tc.want, func(r alerting.Rule) bool { return r.For > 0 }) {
				t.Fatalf("the first check sent %+v: a condition must hold for its rule's For before it pages", out.alerts)
			}
			for k, since := range d.pendingSince { // held for 12 hours, as rulesAgree holds the series
				d.pendingSince[k] = since.Add(-12 * time.Hour)
			}
			d.checkOnce(context.Background())
			var got []alerting.Rule
			for _, a := range out.alerts {
				i := slices.IndexFunc(alerting.Catalog, func(r alerting.Rule) bool { return r.Name == a.Name && r.Severity == a.Severity })
				if i < 0 || !alerting.Catalog[i].Daemon || a.Cluster != "prod" {
					t.Fatalf("the daemon sent %+v, which is not a daemon alert of alerting.Catalog", a)
				}
				if r := alerting.Catalog[i]; a.Summary != r.Summary || a.RunbookURL != r.RunbookURL() || a.Description == "" {
					t.Errorf("the daemon sent %s with summary %q, runbook %q and description %q; want the rule's summary and runbook, and a description",
						a.Name, a.Summary, a.RunbookURL, a.Description)
				}
				if !slices.Contains(got, alerting.Catalog[i]) {
					got = append(got, alerting.Catalog[i])
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("sent %v, want %v", got, tc.want)
			}
			for name, want := range tc.gauges {
				if v := gauge(t, d, name); v != want {
					t.Errorf("%s = %v, want %v", name, v, want)
				}
			}
			rulesAgree(t, d, got)
		})
	}
}

// rulesAgree runs deploy/prometheus-rule.yaml in promtool on the daemon's own series, held for
// 12 hours (long enough for every rule's `for`), and checks that exactly the alerts the daemon
// sent fire there too. Timestamps are shifted so that the eval time is the daemon's now; the
// annotations are left out (TestPromtoolRules in deploy checks them).
func rulesAgree(t *testing.T, d *Daemon, sent []alerting.Rule) {
	t.Helper()
	const at = 12 * time.Hour
	shift := float64(time.Now().Unix()) - at.Seconds()
	families, err := d.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	type series struct {
		Series string `json:"series"`
		Values string `json:"values"`
	}
	var input []series
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "etcdguard_") || (f.GetType() != dto.MetricType_GAUGE && f.GetType() != dto.MetricType_COUNTER) {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := []string{`pod="etcdguard-m1"`}
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+strconv.Quote(l.GetValue()))
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			if f.GetName() == "etcdguard_snapshot_last_success_timestamp_seconds" && v > 0 {
				v -= shift
			}
			input = append(input, series{Series: f.GetName() + "{" + strings.Join(labels, ",") + "}",
				Values: fmt.Sprintf("%s+0x%d", strconv.FormatFloat(v, 'f', -1, 64), int(at/time.Minute))})
		}
	}
	type expAlert struct {
		ExpLabels map[string]string `json:"exp_labels"`
	}
	type alertTest struct {
		EvalTime  string     `json:"eval_time"`
		Alertname string     `json:"alertname"`
		ExpAlerts []expAlert `json:"exp_alerts"`
	}
	var checks []alertTest
	for _, c := range alerting.Catalog {
		if slices.ContainsFunc(checks, func(a alertTest) bool { return a.Alertname == c.Name }) {
			continue
		}
		a := alertTest{EvalTime: at.String(), Alertname: c.Name, ExpAlerts: []expAlert{}}
		for _, r := range sent {
			if r.Name == c.Name {
				a.ExpAlerts = append(a.ExpAlerts, expAlert{ExpLabels: map[string]string{"severity": r.Severity, "cluster": "prod"}})
			}
		}
		checks = append(checks, a)
	}
	tests, err := yaml.Marshal(map[string]any{"rule_files": []string{"rules.yaml"}, "evaluation_interval": "1m",
		"tests": []map[string]any{{"interval": "1m", "input_series": input, "alert_rule_test": checks}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../deploy/prometheus-rule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Spec struct {
			Groups []map[string]any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for _, g := range doc.Spec.Groups {
		for _, r := range g["rules"].([]any) {
			delete(r.(map[string]any), "annotations")
		}
	}
	rules, err := yaml.Marshal(map[string]any{"groups": doc.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"rules.yaml": rules, "tests.yaml": tests} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(testharness.Bin(t, "promtool"), "test", "rules", "tests.yaml")
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("the daemon sent %v; on its series the PrometheusRule fires otherwise: %v\n%s\n%s", sent, err, out.String(), tests)
	}
}

// checkOnce runs on checkLoop and, after every snapshot run, on the leader's term: at the
// same time, they must not race on the pending alerts (go test -race finds it).
func TestCheckOnceConcurrently(t *testing.T) {
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Cluster: "prod", Store: fs, Policy: alerting.Policy{MaxAge: 5 * time.Hour}, AlertAfter: 3}
	d := &Daemon{cfg: cfg, m: newMetrics("prod"), alerter: &alerting.Alerter{Repeat: time.Hour}, log: slog.Default()}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				d.checkOnce(context.Background())
			}
		})
	}
	wg.Wait()
	if len(d.pendingSince) != 1 { // EtcdSnapshotMissing, pending
		t.Errorf("pending alerts %v, want EtcdSnapshotMissing alone", d.pendingSince)
	}
}

// Snapshots the daemon saw and that are gone page EtcdSnapshotLost at the next check, not
// EtcdSnapshotMissing 75 minutes later: EtcdSnapshotTooOld stopped the moment they went.
func TestLostSnapshotsPageAtOnce(t *testing.T) {
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	created := time.Now().Add(-6 * time.Hour).UTC() // too old: EtcdSnapshotTooOld fires
	m := snapshot.Manifest{ID: created.Format("20060102T150405Z") + "-abcdef", Cluster: "prod", CreatedAt: created, Object: "prod/snapshots/x.db"}
	b, _ := json.Marshal(m)
	key := "prod/snapshots/" + m.ID + ".json"
	for k, data := range map[string][]byte{m.Object: []byte("x"), key: b} {
		if err := store.PutBytes(ctx, fs, k, data); err != nil {
			t.Fatal(err)
		}
	}
	out := &sink{}
	cfg := Config{Cluster: "prod", Store: fs, Policy: alerting.Policy{MaxAge: 5 * time.Hour}, AlertAfter: 3}
	d := &Daemon{cfg: cfg, m: newMetrics("prod"), alerter: &alerting.Alerter{Notifiers: []alerting.Notifier{out}, Repeat: time.Hour}, log: slog.Default()}
	d.leader.Store(true)
	firing := func() (names []string) {
		for _, a := range out.alerts {
			if !a.Resolved() {
				names = append(names, a.Name)
			}
		}
		out.alerts = nil
		return names
	}
	d.checkOnce(ctx)
	if got := firing(); !slices.Equal(got, []string{"EtcdSnapshotTooOld"}) {
		t.Fatalf("with a 6h-old snapshot: %v, want EtcdSnapshotTooOld", got)
	}
	for _, k := range []string{key, m.Object} {
		if err := fs.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	d.checkOnce(ctx)
	if got := firing(); !slices.Equal(got, []string{"EtcdSnapshotLost"}) {
		t.Fatalf("once the snapshot is deleted: %v, want EtcdSnapshotLost at once", got)
	}
}
