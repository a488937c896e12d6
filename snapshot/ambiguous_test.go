package snapshot

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
)

// ambiguousStore wraps a real store and makes the manifest PUT fail the way a timeout or a
// SIGTERM in flight does: the client sees an error whether or not the PUT landed.
type ambiguousStore struct {
	store.Store
	land        bool // the manifest PUT reaches the store before the error
	readsFail   bool // and the store cannot be asked about the manifest afterwards
	errInFlight error
}

func isManifest(key string) bool {
	return strings.Contains(key, "/snapshots/") && strings.HasSuffix(key, manifestExt) && !isRecord(key)
}

func (s *ambiguousStore) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if !isManifest(key) {
		return s.Store.Put(ctx, key, r)
	}
	if s.land {
		if _, err := s.Store.Put(ctx, key, r); err != nil {
			return 0, err
		}
	}
	return 0, s.errInFlight
}

func (s *ambiguousStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if s.readsFail && isManifest(key) {
		return nil, errors.New("connection reset by peer")
	}
	return s.Store.Get(ctx, key)
}

func (s *ambiguousStore) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	if s.readsFail && isManifest(key) {
		return store.ObjectInfo{}, errors.New("connection reset by peer")
	}
	return s.Store.Stat(ctx, key)
}

// A manifest PUT that fails ambiguously never leaves a manifest naming a deleted object:
// the object goes only when the manifest is surely absent.
func TestAmbiguousManifestPut(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	put(t, cli, 200, 0, "registry/pods")
	timeout := context.DeadlineExceeded

	tests := []struct {
		name       string
		land       bool
		readsFail  bool
		wantErr    bool
		wantListed bool
	}{
		{name: "landed: the snapshot is complete", land: true, wantListed: true},
		{name: "did not land: nothing is left", land: false, wantErr: true},
		{name: "landed, store unreadable after: both kept", land: true, readsFail: true, wantErr: true, wantListed: true},
		{name: "did not land, store unreadable after: object kept for the next look", land: false, readsFail: true, wantErr: true},
	}
	for _, b := range backends() {
		for _, tc := range tests {
			t.Run(b.name+"/"+tc.name, func(t *testing.T) {
				ctx := context.Background()
				real, _ := b.open(t)
				st := &ambiguousStore{Store: real, land: tc.land, readsFail: tc.readsFail, errInFlight: timeout}
				m, err := Save(ctx, cli, st, SaveOptions{Cluster: "c1", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "fastest"})
				if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, timeout)) {
					t.Fatalf("save: %v (want an error: %v)", err, tc.wantErr)
				}
				list, lerr := List(ctx, real, "c1")
				if lerr != nil || len(list) != map[bool]int{true: 1}[tc.wantListed] {
					t.Fatalf("list: %d snapshots, %v; want listed: %v", len(list), lerr, tc.wantListed)
				}
				objs, _ := real.List(ctx, "c1/snapshots/")
				if tc.wantListed {
					if !Usable(list[0]) {
						t.Fatalf("the listed snapshot is %s: %v", list[0].Verification, list[0].Problems)
					}
					if rep, err := Verify(ctx, real, list[0]); err != nil || !rep.OK {
						t.Fatalf("verify: %+v, %v", rep, err)
					}
					if err == nil && m.ID != list[0].ID {
						t.Fatalf("save returned %s, list has %s", m.ID, list[0].ID)
					}
				} else if !tc.readsFail && len(objs) != 0 {
					t.Fatalf("objects left without a manifest: %v", objs)
				}
			})
		}
	}
}
