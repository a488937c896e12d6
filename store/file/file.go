// Package file is the store backend for a local directory (file:///DIR): a
// mounted volume, an NFS share, or a test's temp dir.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/etcdguard/etcdguard/store"
)

func init() {
	store.Register("file", func(u *url.URL) (string, error) {
		dir, err := ParseURL(u)
		if err != nil {
			return "", err
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", store.Invalid(fmt.Errorf("store directory %q: %w", dir, err))
		}
		return (&Store{dir: abs}).String(), nil
	}, func(_ context.Context, u *url.URL, _ store.Options) (store.Store, error) {
		dir, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		return Open(dir)
	})
}

// ParseURL reads file:///DIR (or file:DIR, relative to the working directory) into the
// directory. Its errors wrap store.ErrInvalid.
func ParseURL(u *url.URL) (string, error) {
	dir := u.Path
	if u.Opaque != "" { // file:relative/dir
		dir = u.Opaque
	}
	if (u.Host != "" && u.Host != "localhost") || u.User != nil || dir == "" || strings.ContainsRune(dir, 0) {
		return "", store.Invalid(fmt.Errorf("malformed --store %q: want file:///ABSOLUTE/DIR (three slashes)", store.Redact(u.String())))
	}
	return dir, nil
}

// tmpMarker is part of every temp file's name: ".<base>.tmp-<random>".
// The leading dot keeps it out of casual ls output; List skips these names.
const tmpMarker = ".tmp-"

// Store keeps each object as a file under its directory; keys map to paths.
type Store struct {
	dir string // absolute
}

var _ store.Store = (*Store)(nil)

// Open returns the store rooted at dir, creating dir if needed so that the
// first backup to a fresh volume just works.
func Open(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("store directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create store directory %s: %w (check that the path is a writable directory)", abs, err)
	}
	return &Store{dir: abs}, nil
}

// String returns file:///DIR.
func (s *Store) String() string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(s.dir)}).String()
}

func (s *Store) path(key string) (string, error) {
	if err := store.CheckKey(key); err != nil {
		return "", err
	}
	for elem := range strings.SplitSeq(key, "/") {
		if isTemp(elem) {
			return "", fmt.Errorf("invalid object key %q: %q is reserved for temp files", key, tmpMarker)
		}
	}
	return filepath.Join(s.dir, filepath.FromSlash(key)), nil
}

// checkRoot fails if the store's directory has gone since Open, as when a
// volume is unmounted: writing into the bare mount point, or reporting "no
// snapshots" from it, would hide that.
func (s *Store) checkRoot() error {
	if _, err := os.Stat(s.dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store directory %s: %w: is the volume mounted? create it with mkdir -p %s", s.dir, store.ErrBucketNotExist, s.dir)
		}
		return err
	}
	return nil
}

func isTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, tmpMarker)
}

// Put writes to a temp file next to the target and renames it into place, so a
// reader sees either the old object or the whole new one, never part of it.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (n int64, err error) {
	p, err := s.path(key)
	if err != nil {
		return 0, err
	}
	if err := s.checkRoot(); err != nil {
		return 0, fmt.Errorf("put %s: %w", key, err)
	}
	dir := filepath.Dir(p)
	_, statErr := os.Stat(dir)
	newDir := errors.Is(statErr, fs.ErrNotExist)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, diskErr(dir, fmt.Errorf("put %s: %w", key, err))
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(p)+tmpMarker+"*")
	if err != nil {
		return 0, diskErr(dir, fmt.Errorf("put %s: %w", key, err))
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	n, err = io.Copy(f, ctxReader{ctx, r})
	if err != nil {
		return n, diskErr(p, fmt.Errorf("put %s: %w", key, err))
	}
	if err := f.Sync(); err != nil {
		return n, diskErr(p, fmt.Errorf("put %s: sync: %w", key, err))
	}
	if err := f.Close(); err != nil {
		return n, diskErr(p, fmt.Errorf("put %s: %w", key, err))
	}
	if err := ctx.Err(); err != nil {
		return n, fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return n, fmt.Errorf("put %s: %w", key, err)
	}
	// The rename is durable only once the directory entry is; a new directory's
	// own entry lives in its parent, so sync up to the store root.
	for d := dir; ; d = filepath.Dir(d) {
		if err := syncDir(d); err != nil {
			return n, fmt.Errorf("put %s: %w", key, err)
		}
		if !newDir || d == s.dir || len(d) <= len(s.dir) {
			break
		}
	}
	return n, nil
}

// diskErr turns "no space left" into advice; the raw errno reads like a bug.
func diskErr(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("disk full writing %s: free space or use another --store: %w", path, err)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// ctxReader makes a long copy stop soon after ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Get opens key for reading.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, notExist(err))
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, store.ErrNotExist)
	}
	return f, nil
}

// notExist makes "a/b" missing when "a" is an object, as it is on S3.
func notExist(err error) error {
	if errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w (%w)", store.ErrNotExist, err)
	}
	return err
}

// Stat describes key.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return store.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return store.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, notExist(err))
	}
	if !fi.Mode().IsRegular() {
		return store.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, store.ErrNotExist)
	}
	return store.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List returns the objects whose keys start with prefix, sorted by key.
func (s *Store) List(ctx context.Context, prefix string) ([]store.ObjectInfo, error) {
	return s.ListAfter(ctx, prefix, "", 0)
}

// ListAfter lists like List, from after on, at most limit objects. Names that sort
// before after are skipped without a stat, so paging through a big directory costs
// reading its names, not every file's metadata.
func (s *Store) ListAfter(ctx context.Context, prefix, after string, limit int) ([]store.ObjectInfo, error) {
	var out []store.ObjectInfo
	err := s.walk(ctx, prefix, func(key string, d fs.DirEntry) error {
		if key <= after || isTemp(d.Name()) || !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		out = append(out, store.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q in %s: %w", prefix, s, err)
	}
	// WalkDir's per-directory order is not key order ("a-b" < "a/b").
	slices.SortFunc(out, func(a, b store.ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// walk calls fn for each regular file that may match prefix, with its key. It
// starts at the deepest directory the prefix names, so listing one cluster's
// snapshots does not read the whole tree.
func (s *Store) walk(ctx context.Context, prefix string, fn func(key string, d fs.DirEntry) error) error {
	if err := store.CheckPrefix(prefix); err != nil {
		return err
	}
	start := s.dir
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(s.dir, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && errors.Is(err, fs.ErrNotExist) {
				return s.checkRoot()
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(s.dir, p)
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), d)
	})
	return err
}

// Delete removes key; a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// AbortIncomplete removes temp files that a killed Put left behind, if they
// were last written more than olderThan ago (a younger one may be a Put in
// progress).
func (s *Store) AbortIncomplete(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	removed := 0
	err := s.walk(ctx, prefix, func(key string, d fs.DirEntry) error {
		name := d.Name()
		if !isTemp(name) {
			return nil
		}
		target := strings.TrimSuffix(key, name) + name[1:strings.LastIndex(name, tmpMarker)]
		if !strings.HasPrefix(target, prefix) {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !fi.ModTime().Before(cutoff) {
			return nil
		}
		if err := os.Remove(filepath.Join(s.dir, filepath.FromSlash(key))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removed++
		return nil
	})
	if err != nil {
		return removed, fmt.Errorf("remove incomplete uploads under %q in %s: %w", prefix, s, err)
	}
	return removed, nil
}
