package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// fetchSnapshot saves a real etcd snapshot to a file, the way `etcdctl snapshot save` does.
func fetchSnapshot(t *testing.T, cli *clientv3.Client) []byte {
	t.Helper()
	rc, err := cli.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func etcdutlStatus(t *testing.T, db []byte) snapshot.Status {
	t.Helper()
	p := filepath.Join(t.TempDir(), "snap.db")
	if err := os.WriteFile(p, db, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := snapshot.NewV3(zap.NewNop()).Status(p)
	if err != nil {
		t.Fatalf("etcdutl status: %v", err)
	}
	return st
}

// digestIn feeds db through a digest in pieces of random size, so page headers and keys
// straddle writes, and returns the result.
func digestIn(t *testing.T, db []byte, seed uint64) (digestResult, error) {
	t.Helper()
	d := newDigest()
	r := rand.New(rand.NewPCG(seed, seed))
	for rest := db; len(rest) > 0; {
		n := min(len(rest), 1+r.IntN(20000))
		if _, err := d.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	return d.finish()
}

func TestScannerMatchesEtcd(t *testing.T) {
	ctx := context.Background()
	big := strings.Repeat("v", 100<<10) // values larger than a page: overflow pages
	tests := []struct {
		name string
		// workload returns the revision it compacted at, if any.
		workload func(t *testing.T, cli *clientv3.Client) (compacted int64)
	}{
		{name: "empty", workload: func(*testing.T, *clientv3.Client) int64 { return 0 }},
		{name: "few keys", workload: func(t *testing.T, cli *clientv3.Client) int64 {
			put(t, cli, 5, 0, "small")
			return 0
		}},
		{name: "many keys, deep tree", workload: func(t *testing.T, cli *clientv3.Client) int64 {
			put(t, cli, 30000, 0, "x")
			return 0
		}},
		{name: "big values then deletes", workload: func(t *testing.T, cli *clientv3.Client) int64 {
			for i := range 40 {
				must(cli.Put(ctx, fmt.Sprintf("/big/%d", i), big))
			}
			for i := range 20 {
				must(cli.Delete(ctx, fmt.Sprintf("/big/%d", i)))
			}
			return 0
		}},
		{name: "stale overflow pages reused", workload: func(t *testing.T, cli *clientv3.Client) int64 {
			var compacted int64
			for round := range 3 {
				for i := range 30 {
					must(cli.Put(ctx, fmt.Sprintf("/big/%d", i), big[:(round+1)*20<<10]))
				}
				compacted = must(cli.Get(ctx, "/")).Header.Revision
				must(cli.Compact(ctx, compacted, clientv3.WithCompactPhysical()))
				put(t, cli, 2000, round, "small")
			}
			return compacted
		}},
		{name: "compacted at the newest tombstone", workload: func(t *testing.T, cli *clientv3.Client) int64 {
			// etcd keeps a tombstone at the compaction revision, so etcdutl still agrees.
			put(t, cli, 100, 0, "x")
			resp := must(cli.Delete(ctx, "/x/0/0"))
			must(cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()))
			return resp.Header.Revision
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := testharness.StartEtcd(t)
			cli := e.Client(t)
			compacted := tc.workload(t, cli)
			serverRev := must(cli.Get(ctx, "/none")).Header.Revision
			db := fetchSnapshot(t, cli)
			want := etcdutlStatus(t, db)

			for seed := range uint64(3) {
				got, err := digestIn(t, db, seed)
				if err != nil {
					t.Fatalf("digest: %v", err)
				}
				if got.KeyRevision != want.Revision {
					t.Errorf("key revision %d, etcdutl snapshot status says %d", got.KeyRevision, want.Revision)
				}
				if got.CompactRevision != compacted {
					t.Errorf("compact revision %d, compacted at %d", got.CompactRevision, compacted)
				}
				if got.Revision != serverRev {
					t.Errorf("revision %d, server is at %d", got.Revision, serverRev)
				}
				if got.Size != int64(len(db)) || got.scanResult.Size != int64(len(db)-trailerSize) {
					t.Errorf("sizes %d/%d for a %d-byte snapshot", got.Size, got.scanResult.Size, len(db))
				}
			}
		})
	}
}

func TestDigestDetectsCorruption(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	put(t, cli, 500, 0, "x")
	db := fetchSnapshot(t, cli)

	tests := []struct {
		name   string
		mangle func([]byte) []byte
		want   string
	}{
		{"flipped byte in the data", func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b }, "trailer does not match"},
		{"flipped byte in the trailer", func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, "trailer does not match"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-4096] }, "trailer does not match"},
		{"tiny", func(b []byte) []byte { return b[:10] }, "too short"},
		{"not bbolt", func(b []byte) []byte {
			junk := bytes.Repeat([]byte{7}, 8192)
			return withTrailer(junk)
		}, "not a bbolt database"},
		{"cut at a page boundary, trailer recomputed", func(b []byte) []byte {
			return withTrailer(b[:len(b)-trailerSize-4096])
		}, "meta page says"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := digestIn(t, tc.mangle(bytes.Clone(db)), 1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestTrailerSplitter(t *testing.T) {
	data := make([]byte, 1000)
	for i := range data {
		data[i] = byte(i)
	}
	for _, step := range []int{1, 7, 31, 32, 33, 500, 1000} {
		var body bytes.Buffer
		ts := &trailerSplitter{body: &body}
		for rest := data; len(rest) > 0; {
			n := min(step, len(rest))
			ts.Write(rest[:n])
			rest = rest[n:]
		}
		if !bytes.Equal(body.Bytes(), data[:len(data)-trailerSize]) || !bytes.Equal(ts.tail, data[len(data)-trailerSize:]) {
			t.Errorf("step %d: body %d bytes, tail %x", step, body.Len(), ts.tail)
		}
	}
}
