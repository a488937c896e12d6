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

// The daemon as shipped against a real Alertmanager whose resolve_timeout is 10s: once the
// only snapshot is older than --max-age, EtcdSnapshotTooOld fires, stays active in
// Alertmanager past resolve_timeout while no new snapshot comes (the schedule is hourly),
// pages once, and resolves when a snapshot is stored. Every address is an IP: nothing
// depends on cluster DNS. (EtcdSnapshotMissing, the empty store of a new install, waits
// its rule's 75 minutes before it pages: TestAlertsFollowTheCatalog.)
func TestE2EDaemonAlertmanager(t *testing.T) {
	const resolveTimeout, maxAge = 10 * time.Second, 8 * time.Second
	am := testharness.StartAlertmanager(t, resolveTimeout)
	e := testharness.StartEtcd(t)
	dir := t.TempDir()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	save := func() {
		t.Helper()
		if r := run(t, nil, "snapshot", "save", "--cluster", "prod", "--store", "file://"+dir, "--endpoints", e.Endpoints[0]); r.code != 0 {
			t.Fatalf("snapshot save: exit %d: %s", r.code, r.stderr)
		}
	}
	save()
	startDaemon(t, nil, "", "--cluster", "prod", "--store", "file://"+dir, "--endpoints", e.Endpoints[0],
		"--schedule", "@every 1h", "--max-age", maxAge.String(), "--election-ttl", "2s", "--check-interval", "1s",
		"--alert-alertmanager", am.URL, "--alert-alertmanager-resend", "2s")

	const name = "EtcdSnapshotTooOld"
	var fired *testharness.AlertmanagerAlert
	for deadline := time.Now().Add(maxAge + 15*time.Second); fired == nil || am.Notified(name, "firing") == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not notified within %s; Alertmanager lists %+v, the webhook got %q", name, maxAge+15*time.Second, am.Alerts(t), am.Notifications())
		}
		fired = am.Alert(t, name)
	}
	time.Sleep(time.Until(fired.StartsAt.Add(resolveTimeout + 2*time.Second)))
	got := am.Alert(t, name)
	if ms, err := snapshot.List(context.Background(), st, "prod"); err != nil || len(ms) != 1 {
		t.Fatalf("the test needs the one old snapshot only %s after the alert began; the store holds %d (%v)", resolveTimeout, len(ms), err)
	}
	if got == nil || got.Status.State != "active" {
		t.Fatalf("%s after %s began, with no new snapshot, Alertmanager lists it as %+v; want active", time.Since(fired.StartsAt).Round(time.Second), name, got)
	}
	if !got.StartsAt.Equal(fired.StartsAt) || got.Labels["cluster"] != "prod" || got.Labels["severity"] != "critical" {
		t.Errorf("the alert changed or lacks labels: %+v, first seen as %+v", got, fired)
	}

	save() // fresh again for maxAge: the alert resolves
	for deadline := time.Now().Add(maxAge); am.Notified(name, "resolved") == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not resolved within %s of a new snapshot; the webhook got %q", name, maxAge, am.Notifications())
		}
	}
	if got := am.Alert(t, name); got != nil && got.Status.State == "active" && !got.StartsAt.After(fired.StartsAt) {
		t.Errorf("Alertmanager still lists the first %s as active after the resolve: %+v", name, got)
	}
	if n := am.Notified(name, "firing"); n != 1 {
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
