package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/pkg/v3/traceutil"
	"go.etcd.io/etcd/server/v3/lease"
	etcdbackend "go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.uber.org/zap"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// etcdRestore opens a snapshot the way an etcd member restored from it starts (mvcc's
// restore: current revision, and the compaction it finishes) and returns both.
func etcdRestore(t *testing.T, db []byte) (rev, compactRev int64) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "member.db")
	if err := os.WriteFile(p, db[:len(db)-trailerSize], 0o600); err != nil {
		t.Fatal(err)
	}
	lg := zap.NewNop()
	bcfg := etcdbackend.DefaultBackendConfig(lg)
	bcfg.Path, bcfg.UnsafeNoFsync = p, true
	be := etcdbackend.New(bcfg)
	defer be.Close()
	le := lease.NewLessor(lg, be, nil, lease.LessorConfig{MinLeaseTTL: 1})
	defer le.Stop()
	kv := mvcc.NewStore(lg, be, le, mvcc.StoreConfig{})
	defer kv.Close()
	txn := kv.Read(mvcc.ConcurrentReadTxMode, traceutil.TODO())
	defer txn.End()
	return txn.Rev(), txn.FirstRev()
}

// withScheduledCompact rewrites the snapshot with meta's scheduledCompactRev set, as a member leaves it
// when a compaction was interrupted, and returns it as etcd streams a snapshot.
func withScheduledCompact(t *testing.T, db []byte, rev int64) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "edit.db")
	if err := os.WriteFile(p, db[:len(db)-trailerSize], 0o600); err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(p, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	key := binary.BigEndian.AppendUint64(nil, uint64(rev))
	key = append(key, '_', 0, 0, 0, 0, 0, 0, 0, 0)
	var out bytes.Buffer
	err = bdb.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(metaBucketName).Put([]byte("scheduledCompactRev"), key)
	})
	if err == nil {
		err = bdb.View(func(tx *bolt.Tx) error { _, err := tx.WriteTo(&out); return err })
	}
	if err != nil {
		t.Fatal(err)
	}
	return withTrailer(out.Bytes())
}

// A compaction that was scheduled but not finished (scheduledCompactRev above
// finishedCompactRev) is finished by the member restored from the snapshot, and may carry
// the revision past the newest key: the manifest says what that member serves.
func TestScannerScheduledCompaction(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	put(t, cli, 1000, 0, "x") // revisions 2 to 11
	must(cli.Compact(ctx, 5))
	keyRev := must(cli.Get(ctx, "/none")).Header.Revision
	db := fetchSnapshot(t, cli)

	tests := []struct {
		name      string
		scheduled int64
	}{
		{"interrupted below the newest key", keyRev - 1},
		{"interrupted at a tombstone compacted away", keyRev + 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := withScheduledCompact(t, db, tc.scheduled)
			wantRev, wantCompact := etcdRestore(t, snap)
			if wantCompact != tc.scheduled {
				t.Fatalf("etcd restores compact revision %d, scheduled %d: the test's premise is wrong", wantCompact, tc.scheduled)
			}
			if st := etcdutlStatus(t, snap); st.Revision != keyRev {
				t.Errorf("etcdutl snapshot status revision %d, want the key revision %d", st.Revision, keyRev)
			}
			got, err := digestIn(t, snap, 1)
			if err != nil {
				t.Fatal(err)
			}
			if got.Revision != wantRev || got.CompactRevision != wantCompact || got.KeyRevision != keyRev {
				t.Fatalf("scanner: revision %d, compact %d, key %d; etcd restores revision %d, compact %d (key revision %d)",
					got.Revision, got.CompactRevision, got.KeyRevision, wantRev, wantCompact, keyRev)
			}
		})
	}
}
