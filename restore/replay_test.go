package restore

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/lease/leasepb"
	"google.golang.org/protobuf/proto"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

type kvState struct {
	value                       string
	create, mod, version, lease int64
}

// stateOf reads the live keys of an etcd bbolt file: the newest revision of each key,
// unless it is a tombstone.
func stateOf(t *testing.T, path string) map[string]kvState {
	t.Helper()
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string]kvState{}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("key")).ForEach(func(k, v []byte) error {
			var kv mvccpb.KeyValue
			if err := proto.Unmarshal(v, &kv); err != nil {
				return err
			}
			if len(k) == 18 && k[17] == 't' {
				delete(out, string(kv.Key))
			} else {
				out[string(kv.Key)] = kvState{string(kv.Value), kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// leaseTTL reads a lease's granted TTL from an etcd bbolt file; 0 if it is absent.
func leaseTTL(t *testing.T, path string, id int64) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ttl int64
	err = db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte("lease")).Get(binary.BigEndian.AppendUint64(nil, uint64(id)))
		if v == nil {
			return nil
		}
		var l leasepb.Lease
		if err := proto.Unmarshal(v, &l); err != nil {
			return err
		}
		ttl = l.TTL
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ttl
}

func TestReplayToRevisions(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		cli.Put(ctx, fmt.Sprintf("/registry/base/%d", i), "b")
	}
	base, err := snapshot.Save(ctx, cli, st, snapshot.SaveOptions{Cluster: "c1", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "fastest",
		History: delta.Identify(cli, st, "c1")})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	capt := &delta.Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: 100 * time.Millisecond}
	go func() { capt.Run(cctx); close(done) }()

	lease, err := cli.Grant(ctx, 777)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 80 {
		var err error
		switch i % 5 {
		case 0:
			_, err = cli.Put(ctx, fmt.Sprintf("/registry/pods/p%d", i%9), fmt.Sprint(i))
		case 1:
			_, err = cli.Delete(ctx, fmt.Sprintf("/registry/pods/p%d", (i+4)%9))
		case 2:
			_, err = cli.Txn(ctx).Then(clientv3.OpPut(fmt.Sprintf("/registry/a/%d", i), "x"), clientv3.OpPut(fmt.Sprintf("/registry/b/%d", i), "y"),
				clientv3.OpDelete(fmt.Sprintf("/registry/b/%d", i-5))).Commit()
		case 3:
			_, err = cli.Put(ctx, fmt.Sprintf("/registry/leases/l%d", i%4), fmt.Sprint(i), clientv3.WithLease(lease.ID))
		case 4:
			_, err = cli.Delete(ctx, "/registry/base/", clientv3.WithPrefix())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	last, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	segs := deltatest.Stored(t, st, "c1", last.Header.Revision)
	cancel()
	<-done
	for _, target := range []int64{base.Revision, base.Revision + 1, base.Revision + 37, base.Revision + 52, last.Header.Revision} {
		t.Run(fmt.Sprint(target), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "db")
			if err := download(ctx, st, base, path); err != nil {
				t.Fatal(err)
			}
			got, err := Replay(ctx, st, base, segs, target, time.Time{}, path)
			if err != nil {
				t.Fatal(err)
			}
			if got.Revision != target {
				t.Fatalf("reached revision %d, want %d", got.Revision, target)
			}
			want := map[string]kvState{}
			resp, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(target))
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range resp.Kvs {
				want[string(kv.Key)] = kvState{string(kv.Value), kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease}
			}
			if have := stateOf(t, path); !maps.Equal(have, want) {
				t.Fatalf("replayed keyspace at %d differs from etcd's: %d keys vs %d", target, len(have), len(want))
			}
			if got.Keys != int64(len(want)) {
				t.Fatalf("replay reports %d keys, etcd had %d", got.Keys, len(want))
			}
			if target > base.Revision+3 {
				if ttl := leaseTTL(t, path, int64(lease.ID)); ttl != 777 {
					t.Fatalf("lease %x replayed with TTL %d, want the original 777", lease.ID, ttl)
				}
			}
		})
	}
}
