package restore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	s3store "github.com/etcdguard/etcdguard/store/s3"
)

// A store that fails while the deltas are read (here S3 cutting every segment's body
// short) is a failed restore to run again, not deltas that end early: the error must
// neither call the segment corrupt nor name an earlier "latest reachable point", which
// would send an operator to restore less than the store holds. (Found by the soak with
// faults on the restore's reads.)
func TestReplayStoreFailureIsNotUnreachable(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	proxy := testharness.StartS3FaultProxy(t, testharness.StartVersityGW(t), testharness.FaultSeed(t))
	srv := proxy.Server()
	st := s3store.NewFromClient(srv.Client(t), srv.Bucket, "r", srv.Options())
	base, err := snapshot.Save(ctx, cli, st, snapshot.SaveOptions{Cluster: "c1", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "fastest",
		History: delta.Identify(cli, st, "c1")})
	if err != nil {
		t.Fatal(err)
	}
	var revs []delta.Revision
	for i := range 30 {
		v := make([]byte, 2048)
		rand.Read(v)
		key := fmt.Sprintf("/registry/pods/ns0/p%d", i)
		r := must(cli.Put(ctx, key, hex.EncodeToString(v))).Header.Revision
		revs = append(revs, delta.Revision{Rev: r, Time: time.Now(), Events: []delta.Event{{Key: []byte(key), Value: []byte(hex.EncodeToString(v)), CreateRev: r, Version: 1}}})
	}
	var segs []*delta.Manifest
	for i := 0; i < len(revs); i += 10 {
		segs = append(segs, must(delta.WriteSegment(ctx, st, "c1", delta.Identity{History: base.History}, revs[i:i+10])))
	}
	path := filepath.Join(t.TempDir(), "db")
	if err := download(ctx, st, base, path); err != nil {
		t.Fatal(err)
	}

	proxy.Set(testharness.FaultRule{Ops: []testharness.S3Op{testharness.OpGetObject}, Faults: []testharness.Fault{testharness.FaultTruncate}, Rate: 1})
	_, err = Replay(ctx, st, base, segs, revs[25].Rev, time.Time{}, path)
	if err == nil {
		t.Fatal("the replay succeeded with every segment cut short")
	}
	t.Logf("replay: %v", err)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("the store's error is lost: %v", err)
	}
	if errors.Is(err, delta.ErrCorrupt) || strings.Contains(err.Error(), "latest reachable point") {
		t.Errorf("a store failure is reported as deltas that end early: %v", err)
	}
	n := proxy.Injected()[testharness.FaultTruncate]
	if n == 0 {
		t.Fatal("no body was cut")
	}
	testharness.RecordFault(t, testharness.FaultRow{Area: "restore --revision (delta replay)", Fault: "S3 body of a delta segment cut short",
		Tries: n, Result: "fails with the store's error and says to run it again; never calls the segment corrupt or names an earlier reachable point"})
}
