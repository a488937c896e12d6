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

func TestLoadK8sKeyspace(t *testing.T) {
	cli := testharness.StartEtcd(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	opts := Options{Prefix: "/registry-a", Keys: 3000, ValueSize: 512, Seed: 42, Concurrency: 4}
	st, err := LoadK8sKeyspace(ctx, cli, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys != opts.Keys {
		t.Fatalf("stats say %d keys, want %d", st.Keys, opts.Keys)
	}
	all, err := cli.Get(ctx, "/registry-a/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Kvs) != st.Keys || all.Header.Revision != st.Revision {
		t.Fatalf("etcd has %d keys at revision %d, stats say %d at %d", len(all.Kvs), all.Header.Revision, st.Keys, st.Revision)
	}
	var sum int64
	for _, kv := range all.Kvs {
		sum += int64(len(kv.Key) + len(kv.Value))
		if n := len(kv.Value); n < 256 || n > 768+64 {
			t.Fatalf("%s: value size %d outside 512±50%%", kv.Key, n)
		}
	}
	if sum != st.Bytes {
		t.Errorf("etcd holds %d bytes, stats say %d", sum, st.Bytes)
	}
	for typ, want := range st.ByType {
		resp, err := cli.Get(ctx, "/registry-a/"+typ+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if int(resp.Count) != want {
			t.Errorf("%s: etcd has %d keys, stats say %d", typ, resp.Count, want)
		}
	}
	for _, typ := range []string{"namespaces", "pods", "events", "services/specs", "minions", "certificatesigningrequests",
		"cert-manager.io/certificates", "apiregistration.k8s.io/apiservices"} {
		if st.ByType[typ] == 0 {
			t.Errorf("no %s keys in %v", typ, st.ByType)
		}
	}
	if st.ByType["namespaces"] != 10 {
		t.Errorf("namespaces: %d, want 10", st.ByType["namespaces"])
	}

	// Same seed under another prefix and concurrency: same keys and values.
	// Another seed: different ones.
	same, other := opts, opts
	same.Prefix, same.Concurrency = "/registry-b", 1
	other.Prefix, other.Seed = "/registry-c", 43
	for _, o := range []Options{same, other} {
		if _, err := LoadK8sKeyspace(ctx, cli, o); err != nil {
			t.Fatal(err)
		}
	}
	b, err := cli.Get(ctx, "/registry-b/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	c, err := cli.Get(ctx, "/registry-c/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Kvs) != len(all.Kvs) {
		t.Fatalf("same seed wrote %d keys, want %d", len(b.Kvs), len(all.Kvs))
	}
	for i, kv := range all.Kvs {
		bk := b.Kvs[i]
		if strings.TrimPrefix(string(kv.Key), "/registry-a") != strings.TrimPrefix(string(bk.Key), "/registry-b") ||
			!bytes.Equal(kv.Value, bk.Value) {
			t.Fatalf("same seed differs at %d: %s vs %s", i, kv.Key, bk.Key)
		}
	}
	diff := 0
	for i := range min(len(c.Kvs), len(all.Kvs)) {
		if !bytes.Equal(all.Kvs[i].Value, c.Kvs[i].Value) {
			diff++
		}
	}
	if diff < len(all.Kvs)/2 {
		t.Errorf("seed 43 matches seed 42 in %d of %d values", len(all.Kvs)-diff, len(all.Kvs))
	}
}

func TestTargetBytes(t *testing.T) {
	cli := testharness.StartEtcd(t).Client(t)
	st, err := LoadK8sKeyspace(context.Background(), cli, Options{TargetBytes: 4 << 20, ValueSize: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes < 4<<20 || st.Bytes > 4<<20+24<<10 {
		t.Fatalf("wrote %d bytes, want just over %d", st.Bytes, 4<<20)
	}
	if st.ByType["namespaces"] != 10 || st.Keys < 200 {
		t.Fatalf("stats: %+v", st)
	}
}

// BenchmarkLoadK8sKeyspace measures write throughput against an in-process
// etcd; each op writes 64 MiB, so -benchtime 4x writes 256 MiB.
func BenchmarkLoadK8sKeyspace(b *testing.B) {
	cli := testharness.StartEtcd(b).Client(b)
	var keys int
	b.SetBytes(64 << 20)
	for i := 0; b.Loop(); i++ {
		st, err := LoadK8sKeyspace(context.Background(), cli, Options{TargetBytes: 64 << 20, Seed: int64(i)})
		if err != nil {
			b.Fatal(err)
		}
		keys += st.Keys
	}
	b.ReportMetric(float64(keys)/b.Elapsed().Seconds(), "keys/s")
}
