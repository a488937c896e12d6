package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// boltLayout finds, with bbolt itself, the key bucket's last leaf page (the one holding the
// newest revision) and the free pages of an etcd database.
func boltLayout(t *testing.T, body []byte) (pageSize int, lastLeaf uint64, free []uint64) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layout.db")
	if err := os.WriteFile(p, body, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(p, 0o400, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		pageSize = tx.DB().Info().PageSize
		lastLeaf = uint64(tx.Bucket(keyBucketName).Root())
		for {
			info, err := tx.Page(int(lastLeaf))
			if err != nil || info.Type != "branch" {
				return err
			}
			page := body[int(lastLeaf)*pageSize:]
			n := int(binary.LittleEndian.Uint16(page[10:]))
			lastLeaf = binary.LittleEndian.Uint64(page[pageHeaderSize+(n-1)*elemSize+8:])
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for id := 2; id < len(body)/pageSize; id++ {
		if info, err := db.Begin(false); err == nil {
			if pi, err := info.Page(id); err == nil && pi != nil && pi.Type == "free" {
				free = append(free, uint64(id))
			}
			info.Rollback()
		}
	}
	return pageSize, lastLeaf, free
}

// A freed page keeps the header of the overflowing key-bucket leaf it once was. Its
// "last key" may stream past only after the live last leaf did, so the scanner finishes the
// stale page later than the live one: the result must not depend on that order.
func TestScannerIgnoresStaleLeafHeaders(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	big := strings.Repeat("v", 100<<10)
	// Three rounds of growing values, compactions and small writes leave free pages on both
	// sides of the last leaf most of the time; where bbolt's allocation did otherwise,
	// more rounds do (the layout is bbolt's choice, not what is tested).
	var (
		db, body  []byte
		ps        int
		last      uint64
		free      []uint64
		below     []uint64
		after     uint64
		maxRounds = 10
	)
	for round := range maxRounds {
		for i := range 30 {
			must(cli.Put(ctx, fmt.Sprintf("/big/%d", i), big[:(round%5+1)*20<<10]))
		}
		rev := must(cli.Get(ctx, "/")).Header.Revision
		must(cli.Compact(ctx, rev, clientv3.WithCompactPhysical()))
		put(t, cli, 2000, round, "small")
		if round < 2 {
			continue
		}
		db = fetchSnapshot(t, cli)
		body = db[:len(db)-trailerSize]
		ps, last, free = boltLayout(t, body)
		below, after = nil, 0
		for _, id := range free {
			if id < last {
				below = append(below, id)
			} else if after == 0 {
				after = id
			}
		}
		if len(below) > 0 && after != 0 {
			break
		}
	}
	if len(below) == 0 || after == 0 {
		t.Fatalf("%d rounds of the workload left no free page on both sides of the last leaf %d: free %v", maxRounds, last, free)
	}

	// Every free page below the live leaf becomes a stale overflowing leaf whose only key,
	// an old revision, lies in the first free page after it.
	stale := bytes.Clone(body)
	keyAt := int(after)*ps + 64
	binary.BigEndian.PutUint64(stale[keyAt:], 1)
	stale[keyAt+8] = '_'
	binary.BigEndian.PutUint64(stale[keyAt+9:], 0)
	le := binary.LittleEndian
	for _, id := range below {
		hdr := stale[int(id)*ps:]
		le.PutUint64(hdr[0:], id)
		le.PutUint16(hdr[8:], leafPageFlag)
		le.PutUint16(hdr[10:], 1)
		le.PutUint32(hdr[12:], uint32(after-id))
		elem := hdr[pageHeaderSize:]
		le.PutUint32(elem[0:], 0)
		le.PutUint32(elem[4:], uint32(keyAt-int(id)*ps-pageHeaderSize))
		le.PutUint32(elem[8:], revKeyLen)
		le.PutUint32(elem[12:], 0)
	}
	mangled := withTrailer(stale)
	want := etcdutlStatus(t, mangled) // only free pages changed: bbolt reads it as before
	if orig := etcdutlStatus(t, db); want.Revision != orig.Revision {
		t.Fatalf("the stale headers changed what etcdutl reads: revision %d, was %d", want.Revision, orig.Revision)
	}
	for seed := range uint64(3) {
		got, err := digestIn(t, mangled, seed)
		if err != nil {
			t.Fatalf("%d stale headers below the last leaf %d: %v", len(below), last, err)
		}
		if got.KeyRevision != want.Revision {
			t.Fatalf("key revision %d, etcdutl snapshot status says %d", got.KeyRevision, want.Revision)
		}
	}
}
