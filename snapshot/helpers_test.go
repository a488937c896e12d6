package snapshot

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// must keeps workload code short; a panic fails the test with a stack trace.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// put writes n keys /<prefix>/<round>/<i> in transactions of 100.
func put(t testing.TB, cli *clientv3.Client, n, round int, prefix string) {
	t.Helper()
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(n, i+100); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/%s/%d/%d", prefix, round, j), strings.Repeat("v", j%300)))
		}
		must(cli.Txn(context.Background()).Then(ops...).Commit())
	}
}

func withTrailer(b []byte) []byte {
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}
