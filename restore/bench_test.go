package restore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// BenchmarkReplay measures point-in-time replay through the MVCC store against the way it
// would go through a server: the setup writes the same revisions as sequential Txns to an
// embedded etcd without fsync (what replaying through embed does), and logs that rate.
func BenchmarkReplay(b *testing.B) {
	const revisions = 30000
	ctx := context.Background()
	e := testharness.StartEtcd(b, func(c *embed.Config) { c.UnsafeNoFsync = true })
	cli := e.Client(b)
	st, err := file.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	base, err := snapshot.Save(ctx, cli, st, snapshot.SaveOptions{Cluster: "c1", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "fastest",
		History: delta.Identify(cli, st, "c1")})
	if err != nil {
		b.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		(&delta.Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: time.Second, MaxBytes: 4 << 20}).Run(cctx)
		close(done)
	}()
	value := make([]byte, 1024)
	start := time.Now()
	var last int64
	for i := range revisions {
		resp, err := cli.Txn(ctx).Then(clientv3.OpPut(fmt.Sprintf("/registry/pods/ns%d/p%d", i%10, (i*7919)%50000), string(value)),
			clientv3.OpPut(fmt.Sprintf("/registry/events/ns%d/e%d", i%10, i), string(value[:100]))).Commit()
		if err != nil {
			b.Fatal(err)
		}
		last = resp.Header.Revision
	}
	txnRate := revisions / time.Since(start).Seconds()
	segs := deltatest.Stored(b, st, "c1", last)
	cancel()
	<-done
	b.ResetTimer()
	var replay time.Duration
	for b.Loop() {
		b.StopTimer()
		path := filepath.Join(b.TempDir(), "db")
		if err := download(ctx, st, base, path); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if _, err := Replay(ctx, st, base, segs, last, time.Time{}, path); err != nil {
			b.Fatal(err)
		}
		replay += time.Since(t0)
	}
	rate := float64(revisions*b.N) / replay.Seconds()
	b.ReportMetric(rate, "revisions/s")
	b.ReportMetric(txnRate, "server-txn-revisions/s")
	b.Logf("replay %.0f revisions/s through the MVCC store; sequential Txns to an embedded etcd (no fsync) %.0f/s: %.1fx", rate, txnRate, rate/txnRate)
}
