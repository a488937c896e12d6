package guard

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store/file"
)

// BenchmarkPlan is a dry run over 200,000 keys, streamed (etcd 3.7+) and paged.
func BenchmarkPlan(b *testing.B) {
	e := testharness.StartEtcd(b)
	cli := e.Client(b)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), cli, loadgen.Options{Keys: 200_000, ValueSize: 128, Concurrency: 16}); err != nil {
		b.Fatal(err)
	}
	st, err := file.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	r, _ := Interpret([]string{"/registry/"}, true, false)
	for _, stream := range []bool{true, false} {
		b.Run(map[bool]string{true: "stream", false: "pages"}[stream], func(b *testing.B) {
			streaming = stream
			defer func() { streaming = true }()
			for b.Loop() {
				p, err := MakePlan(context.Background(), cli, st, r, PlanOptions{Cluster: "bench", TTL: time.Minute})
				if err != nil || p.KeyCount != 200_000 {
					b.Fatalf("plan: %v keys, %v", p.KeyCount, err)
				}
			}
			b.ReportMetric(200_000, "keys/op")
		})
	}
}

// BenchmarkDeleteTxn measures, on 100,000 keys, what the confirm's delete transaction
// costs etcd with each way of guarding it. Only the whole-range compare keeps the
// guarantee (nothing in the range written since R, creates included); a sentinel compare
// sees no write but its own key, and a delete with prev_kv checks only after deleting.
// The compare-only cases repeat without reloading; the deletes reload between runs.
func BenchmarkDeleteTxn(b *testing.B) {
	const keys = 100_000
	e := testharness.StartEtcd(b)
	cli := e.Client(b)
	ctx := context.Background()
	r, _ := Interpret([]string{"/registry/"}, true, false)
	load := func(b *testing.B) int64 {
		b.Helper()
		st, err := loadgen.LoadK8sKeyspace(ctx, cli, loadgen.Options{Keys: keys, ValueSize: 128, Concurrency: 16})
		if err != nil {
			b.Fatal(err)
		}
		return st.Revision
	}
	rev := load(b)
	rangeCmp := func(rev int64) clientv3.Cmp {
		return clientv3.Compare(clientv3.ModRevision(r.Start), "<", rev+1).WithRange(r.End)
	}
	sentinel := clientv3.Compare(clientv3.ModRevision(r.Start+"sentinel"), "<", rev+1)
	for _, tc := range []struct {
		name string
		cmp  []clientv3.Cmp
	}{
		{"compare-only/whole-range", []clientv3.Cmp{rangeCmp(rev)}},
		{"compare-only/sentinel", []clientv3.Cmp{sentinel}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := cli.Txn(ctx).If(tc.cmp...).Commit()
				if err != nil || !resp.Succeeded {
					b.Fatalf("txn: %v", err)
				}
			}
		})
	}
	del := clientv3.OpDelete(r.Start, clientv3.WithRange(r.End))
	delPrev := clientv3.OpDelete(r.Start, clientv3.WithRange(r.End), clientv3.WithPrevKV())
	for _, tc := range []struct {
		name string
		txn  func(rev int64) clientv3.Txn
	}{
		{"delete/whole-range-compare", func(rev int64) clientv3.Txn { return cli.Txn(ctx).If(rangeCmp(rev)).Then(del) }},
		{"delete/whole-range-compare+prev_kv", func(rev int64) clientv3.Txn { return cli.Txn(ctx).If(rangeCmp(rev)).Then(delPrev) }},
		{"delete/sentinel-compare", func(int64) clientv3.Txn { return cli.Txn(ctx).If(sentinel).Then(del) }},
		{"delete/no-compare", func(int64) clientv3.Txn { return cli.Txn(ctx).Then(del) }},
		{"delete/no-compare+prev_kv", func(int64) clientv3.Txn { return cli.Txn(ctx).Then(delPrev) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				if n := keysIn(b, cli, r); n == 0 {
					rev = load(b)
				}
				b.StartTimer()
				resp, err := tc.txn(rev).Commit()
				if err != nil || !resp.Succeeded || resp.Responses[0].GetResponseDeleteRange().Deleted != keys {
					b.Fatalf("delete: %v, %+v", err, resp)
				}
			}
		})
	}
}

func keysIn(b *testing.B, cli *clientv3.Client, r Range) int64 {
	resp, err := cli.Get(context.Background(), r.Start, clientv3.WithRange(r.End), clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	return resp.Count
}
