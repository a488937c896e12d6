package guard

import (
	"context"
	"testing"
	"time"

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
