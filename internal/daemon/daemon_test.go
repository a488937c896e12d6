package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

// receiver is a local HTTP endpoint that records what it is sent.
type receiver struct {
	mu     sync.Mutex
	bodies []string
	url    string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, req.URL.Path+" "+string(b))
		r.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

// waitFor waits until some received body contains every one of subs.
func (r *receiver) waitFor(t *testing.T, what string, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, b := range r.bodies {
			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(b, s)
			}
			if ok {
				r.mu.Unlock()
				return b
			}
		}
		r.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Fatalf("no %s: want %q in one of %q", what, subs, r.bodies)
	return ""
}

func testConfig(e *testharness.Etcd, st store.Store, schedule string, notifiers ...alerting.Notifier) Config {
	return Config{
		Etcd: etcdclient.Config{Endpoints: e.Endpoints, DialTimeout: 2 * time.Second}, Store: st, Cluster: "prod",
		Schedule: schedule, Save: snapshot.SaveOptions{Compression: "zstd", Level: "fastest"},
		Retention: snapshot.Retention{Last: 100}, Policy: alerting.Policy{MaxAge: 5 * time.Hour},
		ElectionTTL: 2 * time.Second, CheckInterval: 200 * time.Millisecond, Notifiers: notifiers, AlertRepeat: time.Hour,
		// These tests place stale or missing snapshots on purpose and watch what follows;
		// TestCatchUp covers the snapshot a new leader takes at once for them.
		NoCatchUp: true,
	}
}

func startDaemon(t *testing.T, e *testharness.Etcd, st store.Store, schedule string, notifiers ...alerting.Notifier) {
	t.Helper()
	runDaemon(t, testConfig(e, st, schedule, notifiers...))
}

// runDaemon runs a daemon until the test ends.
func runDaemon(t *testing.T, cfg Config) *Daemon {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

// A stale store fires EtcdSnapshotTooOld to the webhook and Alertmanager, and a fresh
// save resolves it.
func TestStaleThenFresh(t *testing.T) {
	e := testharness.StartEtcd(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-10 * time.Hour).UTC()
	m, _ := json.Marshal(snapshot.Manifest{ID: old.Format("20060102T150405Z") + "-000000", Cluster: "prod", CreatedAt: old, Object: "prod/snapshots/x"})
	for key, data := range map[string][]byte{"prod/snapshots/x": []byte("x"), "prod/snapshots/" + old.Format("20060102T150405Z") + "-000000.json": m} {
		if err := store.PutBytes(context.Background(), st, key, data); err != nil {
			t.Fatal(err)
		}
	}
	hook, am, slack := newReceiver(t), newReceiver(t), newReceiver(t)
	// The first tick comes after 3 s, long enough for the stale alert to go out first.
	startDaemon(t, e, st, "@every 3s", alerting.Webhook{URL: hook.url + "/hook"}, alerting.Alertmanager{URL: am.url},
		alerting.Slack{URL: slack.url + "/services/T000/B000/secret"})

	hook.waitFor(t, "firing webhook alert", `"alertname":"EtcdSnapshotTooOld"`, `"status":"firing"`, `"cluster":"prod"`, "etcd snapshots too old")
	fired := am.waitFor(t, "firing Alertmanager alert", "/api/v2/alerts", `"alertname":"EtcdSnapshotTooOld"`, `"severity":"critical"`, `"startsAt"`)
	// A firing alert is valid for four resends (1m by default), so Alertmanager keeps it
	// active between them instead of resolving it after its resolve_timeout.
	if ends := amEndsAt(t, fired); time.Until(ends) < 3*time.Minute || time.Until(ends) > 4*time.Minute {
		t.Fatalf("a firing Alertmanager alert ends at %s, want 4m ahead: %s", ends, fired)
	}
	hook.waitFor(t, "resolved webhook alert", `"alertname":"EtcdSnapshotTooOld"`, `"status":"resolved"`, `"ends_at"`)
	// The resolve is a post whose endsAt has passed.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		am.mu.Lock()
		bodies := append([]string(nil), am.bodies...)
		am.mu.Unlock()
		if slices.ContainsFunc(bodies, func(b string) bool {
			return strings.Contains(b, `"alertname":"EtcdSnapshotTooOld"`) && !amEndsAt(t, b).After(time.Now())
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no resolving Alertmanager post (endsAt passed) in %q", bodies)
		}
	}
	slack.waitFor(t, "firing Slack message", `{"text":`, "*CRITICAL* EtcdSnapshotTooOld (cluster prod)")
	slack.waitFor(t, "resolved Slack message", "*RESOLVED* EtcdSnapshotTooOld")
}

// amEndsAt is the endsAt of the one alert in an Alertmanager post the receiver recorded.
func amEndsAt(t *testing.T, body string) time.Time {
	t.Helper()
	_, js, _ := strings.Cut(body, " ")
	var alerts []struct {
		EndsAt time.Time `json:"endsAt"`
	}
	if err := json.Unmarshal([]byte(js), &alerts); err != nil || len(alerts) != 1 {
		t.Fatalf("an Alertmanager post with %d alerts (%v): %s", len(alerts), err, body)
	}
	return alerts[0].EndsAt
}

// putManifest stores a snapshot's manifest (and a stand-in object) created at, as a daemon
// long gone would have left it.
func putManifest(t *testing.T, st store.Store, at time.Time) {
	t.Helper()
	id := at.UTC().Format("20060102T150405Z") + "-000000"
	m, _ := json.Marshal(snapshot.Manifest{ID: id, Cluster: "prod", CreatedAt: at.UTC(), Object: "prod/snapshots/" + id + ".db.zst"})
	for key, data := range map[string][]byte{"prod/snapshots/" + id + ".db.zst": []byte("x"), "prod/snapshots/" + id + ".json": m} {
		if err := store.PutBytes(context.Background(), st, key, data); err != nil {
			t.Fatal(err)
		}
	}
}

// A new leader that finds a scheduled snapshot missed (a tick fell after the newest: the
// last leader died during its run, or none led at the tick) takes one at once instead of
// at the next tick, an hour away here; one that finds a fresh snapshot waits for the tick.
// With none at all it takes the first. Where delta capture starts a history with a full
// snapshot of its own, that one counts: one snapshot, not two.
func TestCatchUp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		newest time.Duration // age of the snapshot already stored; 0: none
		delta  bool
		want   int // snapshots stored by the new leader
	}{
		{name: "missed tick", newest: 3 * time.Hour, want: 1},
		{name: "fresh", newest: 10 * time.Minute, want: 0},
		{name: "none", want: 1},
		{name: "none, delta", delta: true, want: 1},
		// Capture finds a snapshot of no history and starts one with a full snapshot.
		{name: "missed tick, delta", newest: 3 * time.Hour, delta: true, want: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testharness.StartEtcd(t)
			st, err := file.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			had := 0
			if tc.newest > 0 {
				putManifest(t, st, time.Now().Add(-tc.newest))
				had = 1
			}
			cfg := testConfig(e, st, "@every 1h")
			cfg.NoCatchUp, cfg.Delta, cfg.DeltaFlush = false, tc.delta, 200*time.Millisecond
			d := runDaemon(t, cfg)
			count := func() int { return len(must(snapshot.List(context.Background(), st, "prod"))) - had }
			for deadline := time.Now().Add(20 * time.Second); count() < tc.want; time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the new leader stored %d snapshots within 20s, want %d", count(), tc.want)
				}
			}
			for deadline := time.Now().Add(5 * time.Second); !d.leader.Load(); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the daemon was not elected within 5s")
				}
			}
			time.Sleep(3 * time.Second) // anything more it would take, it takes in this time
			if got := count(); got != tc.want {
				t.Fatalf("the new leader stored %d snapshots, want %d", got, tc.want)
			}
		})
	}
}

// A --verify leader that died between its save and its verification (or a save by hand)
// leaves a fresh snapshot nobody checked. The next leader verifies it at once instead of
// letting it count as fresh unchecked for up to a schedule's interval; one found corrupt
// is no backup, so the leader takes one.
func TestCatchUpVerifies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt bool
		want    string // what becomes of the snapshot found unverified: its verdict, or "pruned"
	}{
		{name: "unverified", want: snapshot.Verified},
		// Found corrupt, it fills no retention slot: the run after the leader's own
		// snapshot deletes it.
		{name: "corrupt", corrupt: true, want: "pruned"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := testharness.StartEtcd(t)
			cli := e.Client(t)
			for i := range 50 {
				must(cli.Put(ctx, fmt.Sprintf("/k/%03d", i), strings.Repeat("v", 1000)))
			}
			st, err := file.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			m := must(snapshot.Save(ctx, cli, st, snapshot.SaveOptions{Cluster: "prod", Endpoint: e.Endpoints[0], Compression: "none", Level: "fastest"}))
			if tc.corrupt {
				b := must(store.ReadAll(ctx, st, m.Object, 1<<30))
				b[len(b)/2] ^= 0xff
				if err := store.PutBytes(ctx, st, m.Object, b); err != nil {
					t.Fatal(err)
				}
			}
			cfg := testConfig(e, st, "@every 1h")
			cfg.NoCatchUp, cfg.Verify = false, true
			runDaemon(t, cfg)
			// What became of m, and the snapshots the leader took.
			state := func() (string, []*snapshot.Manifest) {
				got, taken := "pruned", []*snapshot.Manifest{}
				for _, l := range must(snapshot.List(ctx, st, "prod")) {
					if l.ID == m.ID {
						got = l.Verification
					} else {
						taken = append(taken, l)
					}
				}
				return got, taken
			}
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if got, _ := state(); got == tc.want {
					break
				}
				if time.Now().After(deadline) {
					got, taken := state()
					t.Fatalf("within 20s the new leader left %s %s (want %s) and took %d snapshots", m.ID, got, tc.want, len(taken))
				}
			}
			time.Sleep(2 * time.Second) // anything more it would take, it takes in this time
			got, taken := state()
			if want := map[bool]int{false: 0, true: 1}[tc.corrupt]; got != tc.want || len(taken) != want {
				t.Fatalf("the new leader left %s %s and took %d snapshots, want %s and %d", m.ID, got, len(taken), tc.want, want)
			}
			for _, l := range taken {
				if l.Verification != snapshot.Verified {
					t.Fatalf("the snapshot the leader took, %s, is %s", l.ID, l.Verification)
				}
			}
		})
	}
}

// A new install has no snapshot until its first scheduled one: that must not page (the
// rule's For, 75 minutes, is not up); TestAlertsFollowTheCatalog shows it pages after.
func TestNewInstallDoesNotPage(t *testing.T) {
	e := testharness.StartEtcd(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hook := newReceiver(t)
	cfg := testConfig(e, st, "@every 1h", alerting.Webhook{URL: hook.url})
	d := runDaemon(t, cfg)
	// The daemon has checked (no snapshot: age -1) and checked again ten times over.
	for deadline := time.Now().Add(10 * time.Second); gauge(t, d, "etcdguard_snapshot_age_seconds") != -1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not check the store within 10s")
		}
	}
	time.Sleep(10 * cfg.CheckInterval)
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if len(hook.bodies) != 0 {
		t.Fatalf("a new install with no snapshot yet paged: %q", hook.bodies)
	}
}

// The leader captures every change after the first snapshot into chained segments, and
// they replay to etcd's state.
func TestDeltaCapture(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		Etcd: etcdclient.Config{Endpoints: e.Endpoints, DialTimeout: 2 * time.Second}, Store: st, Cluster: "prod",
		Schedule: "@every 1h", Save: snapshot.SaveOptions{Compression: "zstd", Level: "fastest"},
		Retention: snapshot.Retention{Last: 100}, Policy: alerting.Policy{MaxAge: 5 * time.Hour},
		ElectionTTL: 2 * time.Second, Delta: true, DeltaFlush: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { d.Run(dctx); close(done) }()
	// The capture starts from a full snapshot it takes itself.
	var base int64
	for deadline := time.Now().Add(10 * time.Second); base == 0; time.Sleep(50 * time.Millisecond) {
		if ms, _ := snapshot.List(ctx, st, "prod"); len(ms) > 0 {
			base = ms[0].Revision
		}
		if time.Now().After(deadline) {
			t.Fatal("no initial snapshot")
		}
	}
	for i := range 200 {
		if _, err := cli.Put(ctx, "/registry/pods/p"+strconv.Itoa(i%13), strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		if i%17 == 0 {
			cli.Delete(ctx, "/registry/pods/p"+strconv.Itoa(i%5))
		}
	}
	last := must(cli.Get(ctx, "x")).Header.Revision
	// Every change is stored within a few flush intervals (the delta RPO).
	deltatest.Stored(t, st, "prod", last)
	cancel()
	<-done
	segs := deltatest.Stored(t, st, "prod", last)
	if segs[0].FromRev != base+1 || segs[len(segs)-1].ToRev != last || len(delta.Gaps(segs)) != 0 {
		t.Fatalf("segments from %d to %d with gaps %v; want %d to %d", segs[0].FromRev, segs[len(segs)-1].ToRev, delta.Gaps(segs), base+1, last)
	}
	state := map[string]string{}
	for _, kv := range must(cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(base))).Kvs {
		state[string(kv.Key)] = string(kv.Value)
	}
	for _, s := range segs {
		if err := delta.ReadSegment(ctx, st, s, func(r delta.Revision) error {
			for _, ev := range r.Events {
				if ev.Delete {
					delete(state, string(ev.Key))
				} else {
					state[string(ev.Key)] = string(ev.Value)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{}
	for _, kv := range must(cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(last))).Kvs {
		want[string(kv.Key)] = string(kv.Value)
	}
	if !maps.Equal(state, want) {
		t.Fatalf("replayed %d keys, etcd has %d", len(state), len(want))
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A daemon that starts after etcd compacted past the deltas' end (it was down, or no
// daemon led) takes a full snapshot at once, resumes from it, and pages EtcdDeltaGap.
func TestDeltaGapAfterCompaction(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	must(cli.Put(ctx, "/registry/pods/0", "0"))
	s0 := must(snapshot.Save(ctx, cli, st, snapshot.SaveOptions{Cluster: "prod", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "fastest",
		History: delta.Identify(cli, st, "prod")}))
	r := must(cli.Put(ctx, "/registry/pods/a", "1")).Header.Revision
	must(delta.WriteSegment(ctx, st, "prod", delta.Identity{History: s0.History, ClusterID: s0.ClusterID},
		[]delta.Revision{{Rev: r, Time: time.Now(), Events: []delta.Event{{Key: []byte("/registry/pods/a"), Value: []byte("1")}}}}))
	for i := range 10 {
		must(cli.Put(ctx, "/registry/pods/b", strconv.Itoa(i)))
	}
	compacted := must(cli.Get(ctx, "x")).Header.Revision
	must(cli.Compact(ctx, compacted, clientv3.WithCompactPhysical()))

	hook := newReceiver(t)
	cfg := testConfig(e, st, "@every 1h", alerting.Webhook{URL: hook.url})
	cfg.Delta, cfg.DeltaFlush = true, 100*time.Millisecond
	runDaemon(t, cfg)
	hook.waitFor(t, "delta gap alert", `"alertname":"EtcdDeltaGap"`, fmt.Sprintf("compacted revisions after %d", r))
	// the alert is raised before the bridging snapshot is taken
	var snaps []*snapshot.Manifest
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if snaps = must(snapshot.List(ctx, st, "prod")); len(snaps) >= 2 {
			break
		}
	}
	if len(snaps) != 2 || snaps[0].Revision < compacted || snaps[0].History != s0.History {
		t.Fatalf("snapshots %v: want a full snapshot at or after the compaction (%d), in the same history %s", snaps, compacted, s0.History)
	}
	after := must(cli.Put(ctx, "/registry/pods/c", "after")).Header.Revision
	segs := deltatest.Stored(t, st, "prod", after)
	// segs[0] is the segment from before the compaction
	if segs[1].FromRev != snaps[0].Revision+1 || len(delta.Gaps(segs[1:])) != 0 {
		t.Fatalf("capture resumed at %d, want right after the snapshot at %d", segs[1].FromRev, snaps[0].Revision)
	}
}

func TestDeltaAlerts(t *testing.T) {
	now := time.Date(2026, 11, 27, 2, 13, 5, 0, time.UTC)
	failing := errors.New("storing delta segment: store unreachable")
	lost := errors.New("etcd compacted revisions after 41 before they were captured")
	for _, tc := range []struct {
		name          string
		failingSince  time.Duration // before now; 0: not failing
		lostAgo       time.Duration // 0: never
		want          []string
		wantInSummary string
	}{
		{name: "healthy"},
		{name: "a reconnect is not an alert", failingSince: 20 * time.Second},
		{name: "failing for minutes", failingSince: 3 * time.Minute, want: []string{"EtcdDeltaCaptureFailing"}, wantInSummary: "store unreachable"},
		{name: "revisions lost just now", lostAgo: time.Second, want: []string{"EtcdDeltaGap"}, wantInSummary: "after 41"},
		{name: "loss long ago resolved", lostAgo: 2 * time.Hour},
		{name: "both", failingSince: time.Hour, lostAgo: time.Minute, want: []string{"EtcdDeltaCaptureFailing", "EtcdDeltaGap"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Daemon{cfg: Config{Cluster: "prod", AlertRepeat: time.Hour}}
			if tc.failingSince > 0 {
				d.deltaFailingSince.Store(&deltaEvent{at: now.Add(-tc.failingSince), err: failing})
			}
			if tc.lostAgo > 0 {
				d.deltaLost.Store(&deltaEvent{at: now.Add(-tc.lostAgo), err: lost})
			}
			var names []string
			for _, a := range d.deltaAlerts(now) {
				names = append(names, a.Name)
				if a.Cluster != "prod" || !strings.Contains(a.Description, tc.wantInSummary) {
					t.Errorf("%s: cluster %q, description %q", a.Name, a.Cluster, a.Description)
				}
			}
			if !slices.Equal(names, tc.want) {
				t.Fatalf("alerts %v, want %v", names, tc.want)
			}
		})
	}
}
