package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// gatedStore is a real store whose writes the test steers: they fail at once, or hang
// until released (then fail), so a run neither succeeds nor fails while the test looks.
// Reads go through, so the freshness checks see the store as it is.
type gatedStore struct {
	store.Store
	mu      sync.Mutex
	block   bool
	release chan struct{}
}

var errGated = errors.New("the test's store refuses writes")

func (g *gatedStore) Put(ctx context.Context, key string, _ io.Reader) (int64, error) {
	g.mu.Lock()
	block, release := g.block, g.release
	g.mu.Unlock()
	if block {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-release:
		}
	}
	return 0, fmt.Errorf("put %s: %w", key, errGated)
}

func (g *gatedStore) hang() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.block, g.release = true, make(chan struct{})
}

// failAgain makes writes fail at once again, the hung one included.
func (g *gatedStore) failAgain() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.block = false
	close(g.release)
}

// recorder is a chat Notifier that keeps what it is sent, for a daemon's goroutines.
type recorder struct {
	mu     sync.Mutex
	alerts []alerting.Alert
}

func (r *recorder) Notify(_ context.Context, alerts []alerting.Alert) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alerts = append(r.alerts, alerts...)
	return nil
}

func (r *recorder) String() string { return "recorder" }

// sent counts the notifications of rule, firing or resolved, from the i-th on.
func (r *recorder) sent(rule alerting.Rule, resolved bool, from int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, a := range r.alerts[min(from, len(r.alerts)):] {
		if a.Name == rule.Name && a.Severity == rule.Severity && a.Cluster == "prod" && a.Resolved() == resolved {
			n++
		}
	}
	return n
}

// since returns the notifications from the i-th on.
func (r *recorder) since(from int) []alerting.Alert {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]alerting.Alert(nil), r.alerts[min(from, len(r.alerts)):]...)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.alerts)
}

// A leader whose runs failed --alert-after-failures times in a row, and that loses its
// lease and is elected again, starts the new term counting from zero: the failures of the
// old term (while another daemon may have saved fine) neither stay on
// etcdguard_snapshot_failures_in_a_row nor keep EtcdSnapshotFailing firing, and the new
// term's first failure counts 1.
func TestNewTermCountsItsOwnFailures(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &gatedStore{Store: fs}
	out := &recorder{}
	cfg := testConfig(e, st, "@every 1s", out)
	cfg.AlertAfter = 3
	d := runDaemon(t, cfg)
	const inARow = "etcdguard_snapshot_failures_in_a_row"

	waitGauge := func(what string, ok func(v float64) bool) float64 {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if v := gauge(t, d, inARow); ok(v) {
				return v
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s is %v after 20s; notified %v", what, inARow, gauge(t, d, inARow), out.since(0))
			}
		}
	}
	waitGauge("the first term's runs fail", func(v float64) bool { return v >= float64(cfg.AlertAfter) })
	for deadline := time.Now().Add(5 * time.Second); out.sent(alerting.SnapshotFailing, false, 0) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d failed runs in a row and no EtcdSnapshotFailing: notified %v", int(gauge(t, d, inARow)), out.since(0))
		}
	}
	// From here no run ends, so nothing but a new term can bring the count down.
	st.hang()
	failed := gauge(t, d, inARow)
	notified := out.len()

	// etcd revokes the leader's lease, as it does when keepalives stop reaching it.
	key := "/etcdguard/prod/leader/"
	leaders := must(cli.Get(ctx, key, clientv3.WithPrefix())).Kvs
	if len(leaders) != 1 || gauge(t, d, "etcdguard_is_leader") != 1 {
		t.Fatalf("%d election keys under %s, etcdguard_is_leader %v: want this daemon leading", len(leaders), key, gauge(t, d, "etcdguard_is_leader"))
	}
	old := clientv3.LeaseID(leaders[0].Lease)
	must(cli.Revoke(ctx, old))
	lostAt := time.Now()
	sawLoss := false
	for {
		leading := gauge(t, d, "etcdguard_is_leader") == 1
		sawLoss = sawLoss || !leading
		kvs := must(cli.Get(ctx, key, clientv3.WithPrefix())).Kvs
		if sawLoss && leading && len(kvs) == 1 && clientv3.LeaseID(kvs[0].Lease) != old {
			break
		}
		if time.Since(lostAt) > 20*time.Second {
			t.Fatalf("not leading again on a new lease 20s after the old one was revoked (lost leadership: %v, election keys %v)", sawLoss, kvs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v := gauge(t, d, inARow); v != 0 {
		t.Errorf("leading again after %v failed runs of the last term, %s is %v, want 0", failed, inARow, v)
	}
	for deadline := time.Now().Add(5 * time.Second); out.sent(alerting.SnapshotFailing, true, notified) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the new term's EtcdSnapshotFailing did not resolve within 5s; notified since the lease was revoked: %v", out.since(notified))
		}
	}

	// The new term's first failed run counts 1, not one more than the last term's, and
	// pages nothing.
	resolvedAt := out.len()
	st.failAgain()
	if v := waitGauge("the new term's first failure", func(v float64) bool { return v != 0 }); v != 1 {
		t.Errorf("the new term's first failed run left %s at %v, want 1", inARow, v)
	}
	if n := out.sent(alerting.SnapshotFailing, false, resolvedAt); n != 0 {
		t.Errorf("EtcdSnapshotFailing fired again at the new term's first failed run: %v", out.since(resolvedAt))
	}
}
