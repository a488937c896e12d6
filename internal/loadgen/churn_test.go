package loadgen

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestChurn runs the workload for two seconds and reads etcd's history back: every
// counted write is one revision, and each kind of operation shows up in it.
func TestChurn(t *testing.T) {
	cli := testharness.StartEtcd(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := LoadK8sKeyspace(ctx, cli, Options{Keys: 2000, ValueSize: 256, Seed: 1}); err != nil {
		t.Fatal(err)
	}

	o := ChurnOptions{Rate: 500, Duration: 2 * time.Second, Concurrency: 8, ValueSize: 256, Seed: 7}
	st, err := Churn(ctx, cli, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", st)
	target := int64(o.Rate * o.Duration.Seconds())
	least := target / 2
	if testharness.Race {
		least = target / 10 // an embedded etcd under the race detector does not keep up with the rate
	}
	if st.Writes < least || st.Writes > target+int64(o.Rate/10) {
		t.Errorf("%d writes, want about %d", st.Writes, target)
	}
	if st.Errors != 0 {
		t.Errorf("%d errors, first: %v", st.Errors, st.FirstErr)
	}
	if sum := st.Updates + st.Creates + st.Deletes + st.Txns + st.LeasePuts; sum != st.Writes {
		t.Errorf("kinds add up to %d, writes %d", sum, st.Writes)
	}
	end, err := cli.Get(ctx, "health", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if got := end.Header.Revision - st.StartRev; got != st.Writes || st.LastRev != end.Header.Revision {
		t.Errorf("etcd went from revision %d to %d (%d revisions), stats say %d writes up to %d",
			st.StartRev, end.Header.Revision, got, st.Writes, st.LastRev)
	}

	// Count what etcd recorded, revision by revision.
	var puts, dels, leased, multi int
	var last int64
	revs := map[int64]int{}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	for wr := range cli.Watch(wctx, "/registry/", clientv3.WithPrefix(), clientv3.WithRev(st.StartRev+1)) {
		if err := wr.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range wr.Events {
			if !strings.HasPrefix(string(ev.Kv.Key), "/registry/") {
				t.Errorf("write outside the prefix: %s", ev.Kv.Key)
			}
			if ev.Type == clientv3.EventTypeDelete {
				dels++
			} else {
				puts++
				if ev.Kv.Lease != 0 {
					leased++
				}
				if n := len(ev.Kv.Value); n < 128 || n > 384+64 {
					t.Errorf("%s: value size %d outside 256±50%%", ev.Kv.Key, n)
				}
			}
			if revs[ev.Kv.ModRevision]++; revs[ev.Kv.ModRevision] == 2 {
				multi++
			}
			last = max(last, ev.Kv.ModRevision)
		}
		if last >= end.Header.Revision {
			break
		}
	}
	wcancel()
	if int64(len(revs)) != st.Writes {
		t.Errorf("history has %d revisions, stats say %d writes", len(revs), st.Writes)
	}
	if dels == 0 || leased == 0 || multi == 0 {
		t.Errorf("history: %d puts, %d deletes, %d puts with a lease, %d multi-op revisions; want each > 0", puts, dels, leased, multi)
	}
	if int64(leased) != st.LeasePuts {
		t.Errorf("%d puts with a lease in the history, stats say %d", leased, st.LeasePuts)
	}
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases.Leases) != st.Leases || st.Leases == 0 {
		t.Errorf("etcd has %d leases, stats say %d granted", len(leases.Leases), st.Leases)
	}
	// One lease per ~500 writes: a 1,000-write run grants a handful.
	if st.Leases > int(st.Writes/churnLeaseEach)+2 {
		t.Errorf("%d leases for %d writes", st.Leases, st.Writes)
	}
}

// TestChurnDeterministic: the same seed over the same starting keyspace leaves the same
// keys and values, whatever the concurrency.
func TestChurnDeterministic(t *testing.T) {
	cli := testharness.StartEtcd(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := func(prefix string, seed int64, conc int) []keyValue {
		t.Helper()
		if _, err := LoadK8sKeyspace(ctx, cli, Options{Prefix: prefix, Keys: 300, ValueSize: 128, Seed: 1}); err != nil {
			t.Fatal(err)
		}
		st, err := Churn(ctx, cli, ChurnOptions{Prefix: prefix, Rate: 5000, Writes: 400, Concurrency: conc, ValueSize: 128, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		if st.Writes != 400 || st.Errors != 0 {
			t.Fatalf("%s: %+v", prefix, st)
		}
		resp, err := cli.Get(ctx, prefix+"/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var kvs []keyValue
		for _, kv := range resp.Kvs {
			kvs = append(kvs, keyValue{strings.TrimPrefix(string(kv.Key), prefix), kv.Value, kv.Lease != 0})
		}
		return kvs
	}
	a := run("/registry-a", 3, 1)
	b := run("/registry-b", 3, 8)
	c := run("/registry-c", 4, 8)
	if len(a) != len(b) {
		t.Fatalf("same seed: %d keys vs %d", len(a), len(b))
	}
	for i := range a {
		if a[i].key != b[i].key || !bytes.Equal(a[i].value, b[i].value) || a[i].leased != b[i].leased {
			t.Fatalf("same seed differs at %d: %s vs %s", i, a[i].key, b[i].key)
		}
	}
	same := 0
	for i := range min(len(a), len(c)) {
		if a[i].key == c[i].key && bytes.Equal(a[i].value, c[i].value) {
			same++
		}
	}
	if same == len(a) && len(a) == len(c) {
		t.Errorf("seeds 3 and 4 left the same keyspace")
	}
}

type keyValue struct {
	key    string
	value  []byte
	leased bool
}
