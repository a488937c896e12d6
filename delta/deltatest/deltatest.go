// Package deltatest holds what tests of delta capture share.
package deltatest

import (
	"context"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/store"
)

// Stored waits until the delta segments of cluster's current history reach revision rev,
// and returns that history's segments.
func Stored(tb testing.TB, st store.Store, cluster string, rev int64) []*delta.Manifest {
	tb.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		latest, err := delta.Latest(context.Background(), st, cluster)
		if err != nil {
			tb.Fatal(err)
		}
		if latest != nil && latest.Snapshot == "" && latest.Revision >= rev {
			segs, err := delta.Segments(context.Background(), st, cluster, latest.History, 0, nil)
			if err != nil {
				tb.Fatal(err)
			}
			return segs
		}
		if time.Now().After(deadline) {
			tb.Fatalf("revision %d was not stored in a delta segment of cluster %s within a minute", rev, cluster)
		}
	}
}
