package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// The daemon as shipped against a real Alertmanager whose resolve_timeout is 10s: with an
// empty store EtcdSnapshotMissing fires at once, stays active in Alertmanager past
// resolve_timeout while the daemon waits for its first scheduled snapshot (25 s), pages
// once, and resolves when the snapshot is stored. Every address is an IP: nothing depends
// on cluster DNS.
func TestE2EDaemonAlertmanager(t *testing.T) {
	const resolveTimeout = 10 * time.Second
	am := testharness.StartAlertmanager(t, resolveTimeout)
	e := testharness.StartEtcd(t)
	dir := t.TempDir()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	startDaemon(t, nil, "", "--cluster", "prod", "--store", "file://"+dir, "--endpoints", e.Endpoints[0],
		"--schedule", "@every 25s", "--election-ttl", "2s", "--check-interval", "1s",
		"--alert-alertmanager", am.URL, "--alert-alertmanager-resend", "2s")

	var fired *testharness.AlertmanagerAlert
	for deadline := time.Now().Add(15 * time.Second); fired == nil || am.Notified("EtcdSnapshotMissing", "firing") == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("EtcdSnapshotMissing not notified within 15s; Alertmanager lists %+v, the webhook got %q", am.Alerts(t), am.Notifications())
		}
		fired = am.Alert(t, "EtcdSnapshotMissing")
	}
	time.Sleep(time.Until(fired.StartsAt.Add(resolveTimeout + 2*time.Second)))
	got := am.Alert(t, "EtcdSnapshotMissing")
	if ms, err := snapshot.List(context.Background(), st, "prod"); err != nil || len(ms) != 0 {
		t.Fatalf("the test needs the store empty %s after the alert began; it holds %d snapshots (%v)", resolveTimeout, len(ms), err)
	}
	if got == nil || got.Status.State != "active" {
		t.Fatalf("%s after EtcdSnapshotMissing began, with the store still empty, Alertmanager lists it as %+v; want active", time.Since(fired.StartsAt).Round(time.Second), got)
	}
	if !got.StartsAt.Equal(fired.StartsAt) || got.Labels["cluster"] != "prod" || got.Labels["severity"] != "critical" {
		t.Errorf("the alert changed or lacks labels: %+v, first seen as %+v", got, fired)
	}

	for deadline := time.Now().Add(30 * time.Second); am.Notified("EtcdSnapshotMissing", "resolved") == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("EtcdSnapshotMissing not resolved within 30s; the webhook got %q", am.Notifications())
		}
	}
	if ms, err := snapshot.List(context.Background(), st, "prod"); err != nil || len(ms) == 0 {
		t.Fatalf("resolved with no snapshot stored (%v)", err)
	}
	if got := am.Alert(t, "EtcdSnapshotMissing"); got != nil {
		t.Errorf("Alertmanager still lists EtcdSnapshotMissing after the resolve: %+v", got)
	}
	if n := am.Notified("EtcdSnapshotMissing", "firing"); n != 1 {
		t.Errorf("the webhook got %d firing notifications, want 1: %q", n, am.Notifications())
	}
}

// An Alertmanager resend outside its client contract is refused before connecting anywhere.
func TestAlertmanagerResendRange(t *testing.T) {
	for _, v := range []string{"10m", "500ms"} {
		r := run(t, nil, "daemon", "--cluster", "prod", "--store", "file://"+t.TempDir(), "--endpoints", "127.0.0.1:1",
			"--listen", "", "--alert-alertmanager-resend", v)
		if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, "invalid --alert-alertmanager-resend") || !strings.Contains(line, "use 1s to 3m0s") {
			t.Errorf("--alert-alertmanager-resend %s: exit %d, %q", v, r.code, line)
		}
	}
}
