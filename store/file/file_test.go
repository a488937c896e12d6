package file

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/storetest"
)

// testStore lets the suite see temp files without removing them.
type testStore struct {
	*Store
}

func (s testStore) OpenUploads(ctx context.Context) ([]string, error) {
	var tmps []string
	err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && isTemp(d.Name()) {
			tmps = append(tmps, p)
		}
		return err
	})
	return tmps, err
}

func TestSuite(t *testing.T) {
	storetest.Run(t, "file", func(t *testing.T) store.Store {
		s, err := Open(filepath.Join(t.TempDir(), "not", "yet", "there"))
		if err != nil {
			t.Fatal(err)
		}
		return testStore{s}
	})
}

func TestOpenURL(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(t.Context(), "file://"+dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "file://"+filepath.ToSlash(dir); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	for _, bad := range []string{"file://host/dir", "file://"} {
		if _, err := store.Open(t.Context(), bad, store.Options{}); err == nil {
			t.Errorf("Open(%q) succeeded, want an error", bad)
		}
	}
}

func TestOpenNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(filepath.Join(f, "sub"))
	if err == nil || !strings.Contains(err.Error(), f) {
		t.Errorf("Open under a file = %v, want an error naming %s", err, f)
	}
}

// A Put killed with kill -9 leaves its temp file; AbortIncomplete removes it
// once it is old enough to not be a Put in progress.
func TestAbortIncompleteRemovesOldTempFiles(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := store.PutBytes(ctx, s, "c/snapshots/a.db", []byte("data")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.dir, "c", "snapshots")
	old := filepath.Join(dir, ".b.db"+tmpMarker+"123")
	young := filepath.Join(dir, ".c.db"+tmpMarker+"456")
	other := filepath.Join(s.dir, "d", ".x"+tmpMarker+"789")
	for _, p := range []string{old, young, other} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{old, other} {
		if err := os.Chtimes(p, time.Now().Add(-2*time.Hour), time.Now().Add(-2*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if list, err := s.List(ctx, ""); err != nil || len(list) != 1 {
		t.Fatalf("List shows temp files: %+v, %v", list, err)
	}
	n, err := s.AbortIncomplete(ctx, "c/", time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("AbortIncomplete(c/, 1h) = %d, %v; want 1, nil", n, err)
	}
	for p, want := range map[string]bool{old: false, young: true, other: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", p, err == nil, want)
		}
	}
	if n, err := s.AbortIncomplete(ctx, "", 0); err != nil || n != 2 {
		t.Errorf("AbortIncomplete(\"\", 0) = %d, %v; want 2, nil", n, err)
	}
	if _, err := s.Stat(ctx, "c/snapshots/a.db"); err != nil {
		t.Errorf("AbortIncomplete removed a finished object: %v", err)
	}
}

func TestTempNamesAreReserved(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := store.PutBytes(t.Context(), s, "a/.b"+tmpMarker+"1", nil); err == nil {
		t.Error("Put of a temp-file name succeeded, want an error")
	}
}

func TestDiskFullMessage(t *testing.T) {
	err := diskErr("/backups/x", &fs.PathError{Op: "write", Path: "/backups/x", Err: syscall.ENOSPC})
	if !strings.Contains(err.Error(), "disk full writing /backups/x: free space or use another --store") || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("diskErr = %v", err)
	}
}

func TestRootRemovedAfterOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt", "backups")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := store.PutBytes(t.Context(), s, "c/k", []byte("v")); !errors.Is(err, store.ErrBucketNotExist) {
		t.Errorf("Put = %v, want ErrBucketNotExist", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("Put recreated %s", dir)
	}
	if _, err := s.List(t.Context(), "c/"); !errors.Is(err, store.ErrBucketNotExist) {
		t.Errorf("List = %v, want ErrBucketNotExist", err)
	}
}
