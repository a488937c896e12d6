// Package deltatest holds what tests of delta capture share.
package deltatest

import (
	"context"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/store"
)

// Stored waits until cluster's delta segments reach revision rev, and returns them.
func Stored(tb testing.TB, st store.Store, cluster string, rev int64) []*delta.Manifest {
	tb.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		segs, err := delta.List(context.Background(), st, cluster)
		if err != nil {
			tb.Fatal(err)
		}
		if len(segs) > 0 && segs[len(segs)-1].ToRev >= rev {
			return segs
		}
		if time.Now().After(deadline) {
			tb.Fatalf("revision %d was not stored in a delta segment of cluster %s within a minute", rev, cluster)
		}
	}
}
