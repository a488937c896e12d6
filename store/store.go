// Package store is the object-store interface etcdguard writes snapshots,
// manifests and guard data to, and the registry of its backends (s3://, file://).
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"sort"
	"sync"
	"time"
)

// ErrNotExist is returned (wrapped) when an object is missing. It is fs.ErrNotExist so
// that errors.Is works the same for local files and remote objects.
var ErrNotExist = fs.ErrNotExist

// ErrBucketNotExist is returned (wrapped) when the bucket or base directory itself is missing.
var ErrBucketNotExist = errors.New("bucket does not exist")

// ErrAccessDenied is returned (wrapped) when the credentials are refused.
var ErrAccessDenied = errors.New("access denied")

// ObjectInfo describes one stored object. Key is relative to the store's prefix.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store is a flat key/object store. Keys are slash-separated and relative to the
// prefix the store was opened with. Every method that does I/O takes ctx first.
type Store interface {
	// Put streams r, of unknown length, to key. The object becomes visible under key
	// only when Put returns nil; on any error or cancellation nothing is left behind
	// (no partial object, no open multipart upload). It returns the bytes stored.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get opens key for reading. A missing key returns an error wrapping ErrNotExist.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes key. A missing key returns an error wrapping ErrNotExist.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List returns every object whose key starts with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// ListAfter returns, sorted by key, at most limit objects whose key starts with prefix
	// and sorts after the key after ("" for the first). It is what keeps listing a month of
	// delta segments from reading every one: a caller starts right where it needs to.
	ListAfter(ctx context.Context, prefix, after string, limit int) ([]ObjectInfo, error)
	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// AbortIncomplete removes what interrupted uploads under prefix left behind
	// (S3 multipart uploads, temp files) if they started more than olderThan ago,
	// and returns how many it removed. A kill -9 cannot clean up after itself;
	// this is how the next run does.
	AbortIncomplete(ctx context.Context, prefix string, olderThan time.Duration) (int, error)
	// String returns the store's URL, without credentials.
	String() string
}

// Options configures how a store is opened. Fields a backend does not use are ignored.
type Options struct {
	// S3 settings (see the --s3-* flags).
	S3Endpoint     string
	S3Region       string
	S3PathStyle    bool
	S3SSE          string // "", "AES256" or "aws:kms"
	S3KMSKeyID     string
	S3StorageClass string
	// PartSize is the multipart part size in bytes (0: the backend's default).
	PartSize int64
	// Concurrency is how many parts upload at once (0: the backend's default).
	// Memory used by one upload is about (Concurrency+1) × PartSize.
	Concurrency int
}

// Opener opens a store from a parsed URL.
type Opener func(ctx context.Context, u *url.URL, opts Options) (Store, error)

var (
	mu      sync.RWMutex
	openers = map[string]Opener{}
)

// Register makes a backend available for URLs with the given scheme.
// Backends call it from init; the binary imports the backends it ships.
func Register(scheme string, open Opener) {
	mu.Lock()
	defer mu.Unlock()
	openers[scheme] = open
}

// Open opens the store named by rawURL (s3://BUCKET[/PREFIX] or file:///DIR).
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	if rawURL == "" {
		return nil, errors.New("no store given: set --store s3://BUCKET[/PREFIX] or file:///DIR (or ETCDGUARD_STORE)")
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("malformed --store %q: want s3://BUCKET[/PREFIX] or file:///DIR", Redact(rawURL))
	}
	mu.RLock()
	open, ok := openers[u.Scheme]
	schemes := make([]string, 0, len(openers))
	for s := range openers {
		schemes = append(schemes, s+"://")
	}
	mu.RUnlock()
	if !ok {
		sort.Strings(schemes)
		return nil, fmt.Errorf("unsupported --store scheme %q in %q: use one of %v", u.Scheme, Redact(rawURL), schemes)
	}
	return open(ctx, u, opts)
}

// Redact removes any user:password from a URL so it can be printed.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return rawURL
	}
	return u.Redacted()
}

// Walk calls fn for each object under prefix that sorts after the key after, in key order,
// one page of ListAfter at a time, until fn returns false or the objects run out.
func Walk(ctx context.Context, st Store, prefix, after string, fn func(ObjectInfo) (more bool)) error {
	// Pages grow: a caller that needs a few objects lists a few, and one that reads a long
	// listing makes few calls (a directory store reads the whole directory on each).
	page := 1000
	for ; ; page = min(2*page, 16<<10) {
		objs, err := st.ListAfter(ctx, prefix, after, page)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if !fn(o) {
				return nil
			}
		}
		if len(objs) < page {
			return nil
		}
		after = objs[len(objs)-1].Key
	}
}
