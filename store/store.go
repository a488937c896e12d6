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
	"strings"
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

// ErrLocked is returned (wrapped) by Delete when the store refuses because the object is
// under a retention lock (S3 Object Lock): the refusal is the lock doing its job, not a
// failure, and retention reports the object as kept.
var ErrLocked = errors.New("object is locked")

// ErrEncryptionKey is returned (wrapped) when an object cannot be read because it was
// encrypted with a customer key (SSE-C) that was not given, or was another one. It is
// never one object's problem: listings stop on it instead of skipping the object.
var ErrEncryptionKey = errors.New("missing or wrong encryption key")

// ErrInvalid is returned (wrapped) by Open when the settings themselves are wrong (a
// malformed URL, an option no backend takes, an AWS config file that does not parse):
// retrying cannot help. Any other Open error (a server down, a bucket or credentials not
// there yet) may pass, which is why a daemon keeps retrying those (see Lazy).
var ErrInvalid = errors.New("invalid store settings")

// Invalid marks err as ErrInvalid without changing its message.
func Invalid(err error) error { return invalidError{err} }

type invalidError struct{ error }

func (e invalidError) Unwrap() []error { return []error{e.error, ErrInvalid} }

// EncryptedExt ends the key of every object stored encrypted (internal/crypt): the key
// says how to read it, whatever process reads it.
const EncryptedExt = ".age"

// Encrypting is a store that encrypts objects put under keys ending in EncryptedExt; EncryptTo
// returns the recipients' public keys, or none when this process encrypts nothing.
type Encrypting interface{ EncryptTo() []string }

// EncryptTo returns the public keys st encrypts to (nil: it stores in the clear). Callers
// name their objects with EncryptedExt and record the keys when there are some.
func EncryptTo(st Store) []string {
	if e, ok := st.(Encrypting); ok {
		return e.EncryptTo()
	}
	return nil
}

// StoredSizer is a reader from Get that returns something other than the stored bytes
// (decrypted ones): StoredSize is how many stored bytes it has read so far.
type StoredSizer interface{ StoredSize() int64 }

// ObjectInfo describes one stored object. Key is relative to the store's prefix.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
	// RetainUntil is when the object's retention lock (S3 Object Lock) ends; zero when it
	// has none. Only Stat fills it in: listings do not carry it.
	RetainUntil time.Time
}

// Locked reports whether the object cannot be deleted at now because of its retention lock.
func (o ObjectInfo) Locked(now time.Time) bool { return now.Before(o.RetainUntil) }

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
	// S3SSECKeyFile holds the SSE-C customer key (32 raw bytes, or their base64); the key
	// itself is never in Options, so it cannot end up in a log line or an error.
	S3SSECKeyFile string
	// S3ObjectLockMode ("GOVERNANCE" or "COMPLIANCE") and S3ObjectLockRetain give every
	// object Put writes a retention lock of that mode until now + S3ObjectLockRetain.
	S3ObjectLockMode   string
	S3ObjectLockRetain time.Duration
	// PartSize is the multipart part size in bytes (0: the backend's default).
	PartSize int64
	// StallTimeout abandons, and retries, one request within a Put (a part) that has moved
	// no bytes for this long (0: never). It is below the store's timeout (WrapOptions), which
	// otherwise gives up on the whole upload.
	StallTimeout time.Duration
	// Concurrency is how many parts upload at once (0: the backend's default).
	// Memory used by one upload is about (Concurrency+1) × PartSize.
	Concurrency int
}

// Opener opens a store from a parsed URL.
type Opener func(ctx context.Context, u *url.URL, opts Options) (Store, error)

// Parser checks a URL of its backend's scheme as the backend's Opener does, without
// opening anything, and returns the URL the opened store's String() gives.
type Parser func(u *url.URL) (string, error)

var (
	mu      sync.RWMutex
	openers = map[string]Opener{}
	parsers = map[string]Parser{}
)

// Register makes a backend available for URLs with the given scheme: parse checks its
// URLs (Parse), open opens them (Open). Backends call it from init; the binary imports
// the backends it ships.
func Register(scheme string, parse Parser, open Opener) {
	mu.Lock()
	defer mu.Unlock()
	openers[scheme] = open
	parsers[scheme] = parse
}

// Open opens the store named by rawURL (s3://BUCKET[/PREFIX] or file:///DIR).
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	mu.RLock()
	open := openers[u.Scheme]
	mu.RUnlock()
	return open(ctx, u, opts)
}

// Parse checks rawURL as Open does, without opening the store, and returns the URL the
// store's String() would give: the same store, without credentials. Its errors wrap
// ErrInvalid.
func Parse(rawURL string) (string, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return "", err
	}
	mu.RLock()
	parse := parsers[u.Scheme]
	mu.RUnlock()
	return parse(u)
}

// parseURL reads rawURL and checks that its scheme is a registered backend's.
func parseURL(rawURL string) (*url.URL, error) {
	if rawURL == "" {
		return nil, Invalid(errors.New("no store given: set --store s3://BUCKET[/PREFIX] or file:///DIR (or ETCDGUARD_STORE)"))
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return nil, Invalid(fmt.Errorf("malformed --store %q: want s3://BUCKET[/PREFIX] or file:///DIR", Redact(rawURL)))
	}
	mu.RLock()
	_, ok := openers[u.Scheme]
	schemes := make([]string, 0, len(openers))
	for s := range openers {
		schemes = append(schemes, s+"://")
	}
	mu.RUnlock()
	if !ok {
		sort.Strings(schemes)
		return nil, Invalid(fmt.Errorf("unsupported --store scheme %q in %q: use one of %v", u.Scheme, Redact(rawURL), schemes))
	}
	// No backend reads a query or a fragment: one given (?region=...) would be ignored.
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		bare := *u
		bare.RawQuery, bare.ForceQuery, bare.Fragment, bare.RawFragment = "", false, "", ""
		return nil, Invalid(fmt.Errorf("malformed --store %q: a query (?...) or fragment (#...) means nothing here; options are flags (--s3-region, ...)", Redact(bare.String())))
	}
	return u, nil
}

// Redact removes any user:password from a URL so it can be printed, even from one that
// does not parse (which is when it gets printed, in the error saying so).
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err == nil {
		if u.User == nil {
			return rawURL
		}
		if _, hasPassword := u.User.Password(); !hasPassword {
			u.User = url.User("xxxxx") // a user alone may be a token (https://TOKEN@host)
		}
		return u.Redacted()
	}
	// What url.Parse would read as the user info: the authority, up to its last '@'.
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return rawURL
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return rawURL
	}
	user := "xxxxx"
	if name, _, hasPassword := strings.Cut(authority[:at], ":"); hasPassword {
		user = name + ":xxxxx"
	}
	return scheme + "://" + user + rest[at:]
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
