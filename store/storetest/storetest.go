// Package storetest is the test suite every store backend must pass: the same
// body runs against the file store, gofakes3 and a real S3 server, so the
// backends cannot drift apart in what "missing", "sorted" or "nothing left
// behind" mean.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
)

// PartSize is the multipart part size backends should be configured with for
// Run, so that the sizes below fall on both sides of part boundaries. It is
// S3's minimum, which real servers enforce.
const PartSize = 5 << 20

// Uploads is implemented by test wrappers that can see what an unfinished Put
// leaves behind (S3 multipart uploads, temp files) without removing it.
// AbortIncomplete alone cannot show a leak: it is also the cleanup.
type Uploads interface {
	OpenUploads(ctx context.Context) ([]string, error)
}

// Run runs the suite. newStore must return an empty store, isolated from the
// stores of other calls (its own directory or prefix). backend names it in the
// reliability report.
func Run(t *testing.T, backend string, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore func(t *testing.T) store.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"Missing", testMissing},
		{"List", testList},
		{"ListAfter", testListAfter},
		{"Isolation", testIsolation},
		{"Delete", testDelete},
		{"Overwrite", testOverwrite},
		{"FailingReader", func(t *testing.T, ns func(t *testing.T) store.Store) { testFailingReader(t, backend, ns) }},
		{"Cancel", func(t *testing.T, ns func(t *testing.T) store.Store) { testCancel(t, backend, ns) }},
		{"InvalidKeys", testInvalidKeys},
		{"AbortIncomplete", testAbortIncomplete},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore)
		})
	}
}

// data returns size deterministic pseudo-random bytes (incompressible, like a
// compressed snapshot) without holding them in memory.
func data(seed uint64, size int64) io.Reader {
	var s [32]byte
	s[0] = byte(seed)
	return io.LimitReader(rand.NewChaCha8(s), size)
}

func digest(t *testing.T, r io.Reader) (int64, [32]byte) {
	t.Helper()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return n, [32]byte(h.Sum(nil))
}

// chunky returns reads of awkward sizes, as a network stream does.
type chunky struct {
	r io.Reader
	i int
}

func (c *chunky) Read(p []byte) (int, error) {
	sizes := []int{1, 7, 1000, 32 << 10, 65536 + 3}
	c.i++
	return c.r.Read(p[:min(len(p), sizes[c.i%len(sizes)])])
}

func testRoundTrip(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	tests := []struct {
		name string
		size int64
		wrap func(io.Reader) io.Reader
	}{
		{"empty", 0, nil},
		{"small", 1000, nil},
		{"small-with-eof", 1000, iotest.DataErrReader},
		{"one-part", PartSize, nil},
		{"one-part-and-a-byte", PartSize + 1, nil},
		{"two-parts", 2 * PartSize, func(r io.Reader) io.Reader { return &chunky{r: r} }},
		{"several-parts", 2*PartSize + 2<<20, iotest.HalfReader},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := "c/snapshots/" + tt.name + ".db"
			r := data(uint64(i), tt.size)
			if tt.wrap != nil {
				r = tt.wrap(r)
			}
			n, err := s.Put(ctx, key, r)
			if err != nil {
				t.Fatalf("Put(%s): %v", key, err)
			}
			if n != tt.size {
				t.Errorf("Put(%s) = %d bytes, want %d", key, n, tt.size)
			}
			info, err := s.Stat(ctx, key)
			if err != nil {
				t.Fatalf("Stat(%s): %v", key, err)
			}
			if info.Key != key || info.Size != tt.size || info.ModTime.IsZero() {
				t.Errorf("Stat(%s) = %+v, want key %s, size %d, a mod time", key, info, key, tt.size)
			}
			rc, err := s.Get(ctx, key)
			if err != nil {
				t.Fatalf("Get(%s): %v", key, err)
			}
			defer rc.Close()
			gotN, got := digest(t, rc)
			_, want := digest(t, data(uint64(i), tt.size))
			if gotN != tt.size || got != want {
				t.Errorf("Get(%s) returned %d bytes with sha256 %x, want %d bytes with %x", key, gotN, got[:8], tt.size, want[:8])
			}
			checkNothingLeft(t, s)
		})
	}
}

func testMissing(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	if err := store.PutBytes(ctx, s, "dir/obj", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// "dir" is a directory to the file store; "dir/obj/deeper" has a file as parent.
	for _, key := range []string{"missing", "dir", "dir/missing", "dir/obj/deeper"} {
		if _, err := s.Get(ctx, key); !errors.Is(err, store.ErrNotExist) {
			t.Errorf("Get(%s) error = %v, want one wrapping store.ErrNotExist", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, store.ErrNotExist) {
			t.Errorf("Stat(%s) error = %v, want one wrapping store.ErrNotExist", key, err)
		}
	}
}

func keys(infos []store.ObjectInfo) []string {
	out := []string{}
	for _, o := range infos {
		out = append(out, o.Key)
	}
	return out
}

func testList(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	// Put out of order; "-" < "/" < "0" catches sorting per directory.
	all := []string{"c1/snapshots/2.json", "c10/snapshots/x.json", "c1/snapshots/1.db.zst", "c1-old/y",
		"c1/guard/plans/p.json", "c1/snapshots/1.json"}
	for i, k := range all {
		if err := store.PutBytes(ctx, s, k, bytes.Repeat([]byte("x"), i)); err != nil {
			t.Fatal(err)
		}
	}
	sorted := slices.Sorted(slices.Values(all))
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", sorted},
		{"c1/snapshots/", []string{"c1/snapshots/1.db.zst", "c1/snapshots/1.json", "c1/snapshots/2.json"}},
		{"c1/snapshots/1", []string{"c1/snapshots/1.db.zst", "c1/snapshots/1.json"}},
		{"c1/", []string{"c1/guard/plans/p.json", "c1/snapshots/1.db.zst", "c1/snapshots/1.json", "c1/snapshots/2.json"}},
		{"c1", sorted},
		{"c10/", []string{"c10/snapshots/x.json"}},
		{"c2/", []string{}},
		{"c1/snapshots/1.json", []string{"c1/snapshots/1.json"}},
	}
	for _, tt := range tests {
		got, err := s.List(ctx, tt.prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", tt.prefix, err)
		}
		if !slices.Equal(keys(got), tt.want) {
			t.Errorf("List(%q) = %q, want %q", tt.prefix, keys(got), tt.want)
		}
		for _, o := range got {
			if want := int64(slices.Index(all, o.Key)); o.Size != want || o.ModTime.IsZero() {
				t.Errorf("List(%q): %+v, want size %d and a mod time", tt.prefix, o, want)
			}
		}
	}
}

func testListAfter(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	var all []string
	for i := range 25 {
		all = append(all, fmt.Sprintf("c1/deltas/h/%020d", i))
	}
	all = append(all, "c1/deltas/h-old/x", "c1/deltas/i")
	for _, k := range all {
		if err := store.PutBytes(ctx, s, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		prefix, after string
		limit         int
		want          []string
	}{
		{"c1/deltas/h/", "", 3, all[:3]},
		{"c1/deltas/h/", all[20], 0, all[21:25]},
		{"c1/deltas/h/", all[20], 2, all[21:23]},
		{"c1/deltas/h/", "c1/deltas/h/00000000000000000009~", 1, all[10:11]},
		{"c1/deltas/h/", all[24], 5, nil},
		{"c1/deltas/", all[24], 0, all[26:]}, // "h-old" < "h/"
	}
	for _, tt := range tests {
		got, err := s.ListAfter(ctx, tt.prefix, tt.after, tt.limit)
		if err != nil {
			t.Fatalf("ListAfter(%q, %q, %d): %v", tt.prefix, tt.after, tt.limit, err)
		}
		if !slices.Equal(keys(got), tt.want) && !(len(got) == 0 && len(tt.want) == 0) {
			t.Errorf("ListAfter(%q, %q, %d) = %q, want %q", tt.prefix, tt.after, tt.limit, keys(got), tt.want)
		}
	}
	// Walk pages through everything after a key, and stops when told.
	var walked []string
	if err := store.Walk(ctx, s, "c1/deltas/h/", all[1], func(o store.ObjectInfo) bool {
		walked = append(walked, o.Key)
		return len(walked) < 5
	}); err != nil || !slices.Equal(walked, all[2:7]) {
		t.Errorf("Walk = %q, %v; want %q", walked, err, all[2:7])
	}
}

func testIsolation(t *testing.T, newStore func(t *testing.T) store.Store) {
	s1, s2 := newStore(t), newStore(t)
	ctx := t.Context()
	if err := store.PutBytes(ctx, s1, "k", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if got, err := s2.List(ctx, ""); err != nil || len(got) != 0 {
		t.Errorf("another store lists %v, %v; want nothing", keys(got), err)
	}
	if _, err := s2.Stat(ctx, "k"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("another store's Stat(k) = %v, want ErrNotExist", err)
	}
}

func testDelete(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	if err := store.PutBytes(ctx, s, "a/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := store.PutBytes(ctx, s, "a/k2", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a/k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Stat(ctx, "a/k"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Stat after Delete = %v, want ErrNotExist", err)
	}
	if got, err := s.List(ctx, ""); err != nil || !slices.Equal(keys(got), []string{"a/k2"}) {
		t.Errorf("List after Delete = %q, %v; want [a/k2]", keys(got), err)
	}
	for _, key := range []string{"a/k", "never/was"} {
		if err := s.Delete(ctx, key); err != nil {
			t.Errorf("Delete(%s) of a missing key = %v, want nil", key, err)
		}
	}
}

func testOverwrite(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	if _, err := s.Put(ctx, "k", data(1, PartSize+1)); err != nil {
		t.Fatal(err)
	}
	if err := store.PutBytes(ctx, s, "k", []byte("short")); err != nil {
		t.Fatal(err)
	}
	got, err := store.ReadAll(ctx, s, "k", 1<<20)
	if err != nil || string(got) != "short" {
		t.Errorf("after overwrite Get(k) = %.20q, %v; want \"short\"", got, err)
	}
	if list, err := s.List(ctx, ""); err != nil || len(list) != 1 || list[0].Size != 5 {
		t.Errorf("after overwrite List = %+v, %v; want k with 5 bytes", list, err)
	}
}

var errBoom = errors.New("boom: source stream failed")

// failing returns size good bytes, then errBoom.
func failing(size int64) io.Reader {
	return io.MultiReader(data(9, size), iotest.ErrReader(errBoom))
}

// cancelling cancels ctx once size bytes have been read, and goes on
// returning data: Put has to notice ctx, not a stream error.
type cancelling struct {
	r      io.Reader
	left   int64
	cancel context.CancelFunc
}

func (c *cancelling) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.left -= int64(n); c.left <= 0 {
		c.cancel()
	}
	return n, err
}

var failSizes = []struct {
	name string
	size int64
}{
	{"within-first-part", 1 << 20},
	{"after-one-part", PartSize + 1<<20},
	{"after-three-parts", 3*PartSize + 1},
}

func testFailingReader(t *testing.T, backend string, newStore func(t *testing.T) store.Store) {
	testharness.RecordFault(t, testharness.FaultRow{Area: "store Put (" + backend + ")",
		Fault: "the source stream fails within the first part, after one, after three", Tries: 2 * len(failSizes),
		Result: "error wraps the stream's; no object, no open upload; an overwritten object keeps its old content"})
	s := newStore(t)
	ctx := t.Context()
	if err := store.PutBytes(ctx, s, "old", []byte("previous version")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range failSizes {
		t.Run(tt.name, func(t *testing.T) {
			key := "c/" + tt.name
			_, err := s.Put(ctx, key, failing(tt.size))
			if !errors.Is(err, errBoom) {
				t.Fatalf("Put of a failing stream = %v, want an error wrapping %v", err, errBoom)
			}
			checkAbsent(t, s, key)
			_, err = s.Put(ctx, "old", failing(tt.size))
			if !errors.Is(err, errBoom) {
				t.Fatalf("Put of a failing stream over an object = %v, want an error wrapping %v", err, errBoom)
			}
			if got, err := store.ReadAll(ctx, s, "old", 1<<20); err != nil || string(got) != "previous version" {
				t.Errorf("failed overwrite changed the object: %.20q, %v", got, err)
			}
			checkNothingLeft(t, s)
		})
	}
}

func testCancel(t *testing.T, backend string, newStore func(t *testing.T) store.Store) {
	testharness.RecordFault(t, testharness.FaultRow{Area: "store Put (" + backend + ")",
		Fault: "the caller cancels within the first part, after one, after three", Tries: len(failSizes),
		Result: "error wraps context.Canceled; no object, no open upload"})
	s := newStore(t)
	for _, tt := range failSizes {
		t.Run(tt.name, func(t *testing.T) {
			key := "c/" + tt.name
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			_, err := s.Put(ctx, key, &cancelling{r: data(3, 10*PartSize), left: tt.size, cancel: cancel})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Put with ctx cancelled midway = %v, want an error wrapping context.Canceled", err)
			}
			checkAbsent(t, s, key)
			checkNothingLeft(t, s)
		})
	}
}

func checkAbsent(t *testing.T, s store.Store, key string) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.Stat(ctx, key); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("after a failed Put, Stat(%s) = %v, want ErrNotExist", key, err)
	}
	list, err := s.List(ctx, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if slices.Contains(keys(list), key) {
		t.Errorf("after a failed Put, List shows %s", key)
	}
}

// checkNothingLeft fails if a Put left an upload or temp file behind.
func checkNothingLeft(t *testing.T, s store.Store) {
	t.Helper()
	ctx := t.Context()
	if u, ok := s.(Uploads); ok {
		open, err := u.OpenUploads(ctx)
		if err != nil {
			t.Fatalf("list open uploads: %v", err)
		}
		if len(open) > 0 {
			t.Errorf("open uploads left behind: %q", open)
		}
	}
	if n, err := s.AbortIncomplete(ctx, "", 0); err != nil || n != 0 {
		t.Errorf("AbortIncomplete found %d uploads left behind (err %v), want 0", n, err)
	}
}

func testInvalidKeys(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	for _, key := range []string{"", "/abs", "../escape", "a/../../escape", "a//b", "./a", "a/", `a\..\b`} {
		if _, err := s.Put(ctx, key, bytes.NewReader([]byte("x"))); err == nil {
			t.Errorf("Put(%q) succeeded, want an error", key)
		}
		if _, err := s.Get(ctx, key); err == nil || errors.Is(err, store.ErrNotExist) {
			t.Errorf("Get(%q) = %v, want an invalid-key error", key, err)
		}
		if err := s.Delete(ctx, key); err == nil {
			t.Errorf("Delete(%q) succeeded, want an error", key)
		}
	}
	for _, prefix := range []string{"/", "../", "a/../.."} {
		if _, err := s.List(ctx, prefix); err == nil {
			t.Errorf("List(%q) succeeded, want an error", prefix)
		}
	}
	if list, err := s.List(ctx, ""); err != nil || len(list) != 0 {
		t.Errorf("after invalid puts List = %q, %v; want nothing", keys(list), err)
	}
}

func testAbortIncomplete(t *testing.T, newStore func(t *testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	if err := store.PutBytes(ctx, s, "c/snapshots/a.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"", "c/", "c/snapshots/", "other/"} {
		if n, err := s.AbortIncomplete(ctx, prefix, 0); err != nil || n != 0 {
			t.Errorf("AbortIncomplete(%q) = %d, %v; want 0, nil", prefix, n, err)
		}
	}
	if _, err := s.Stat(ctx, "c/snapshots/a.json"); err != nil {
		t.Errorf("AbortIncomplete removed a finished object: %v", err)
	}
	if s.String() == "" {
		t.Error("String() is empty")
	}
}
