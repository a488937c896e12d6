package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// ErrStalled is returned (wrapped) when a store call made no progress for its timeout.
var ErrStalled = errors.New("the store stopped answering")

// WrapOptions configures the decorators Wrap puts around a backend.
type WrapOptions struct {
	// Timeout bounds a call that moves no bytes (Stat, List, Delete, AbortIncomplete, opening
	// a Get) and, for a streaming Get or Put, the time without progress on the store's side:
	// an 8 GiB upload may take an hour, but never this long without a part moving. A Put's
	// time waiting for its source (etcd) does not count. 0 disables it.
	Timeout time.Duration
	// Retry is how failed calls are retried (DefaultRetry; zero Attempts: never).
	Retry RetryPolicy
}

// Wrap assembles the decorators every store the binary opens gets, in one place (like
// restic's wrapBackend), so backends stay plain: the leadership fence (see WithFence),
// then retries, then deadlines, so that each attempt gets its own deadline and a stalled
// one is tried again.
func Wrap(s Store, o WrapOptions) Store {
	if o.Timeout > 0 {
		s = &deadlines{Store: s, timeout: o.Timeout}
	}
	if o.Retry.Attempts > 1 {
		s = &retrying{Store: s, p: o.Retry}
	}
	return fenced{s}
}

// deadlines gives every call a timeout, so a store that accepts connections and never
// answers cannot hold a command, or a daemon's SIGTERM, forever.
type deadlines struct {
	Store
	timeout time.Duration
}

// stalled explains an error that the timeout caused, and passes others through.
func (s *deadlines) stalled(ctx context.Context, op, key string, err error) error {
	if err == nil || !errors.Is(context.Cause(ctx), ErrStalled) {
		return err
	}
	// The call may have failed for a reason of its own before the timeout went off (and
	// then stalled cleaning up): that reason is the one to tell.
	if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrStalled) {
		return err
	}
	return fmt.Errorf("%s %s in %s: %w: nothing moved for %s; check that the store is reachable, or raise --store-timeout for a slow link",
		op, key, s.Store, ErrStalled, s.timeout)
}

func (s *deadlines) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, s.timeout, ErrStalled)
}

func (s *deadlines) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	info, err := s.Store.Stat(ctx, key)
	return info, s.stalled(ctx, "stat", key, err)
}

func (s *deadlines) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	out, err := s.Store.List(ctx, prefix)
	return out, s.stalled(ctx, "list", prefix, err)
}

func (s *deadlines) ListAfter(ctx context.Context, prefix, after string, limit int) ([]ObjectInfo, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	out, err := s.Store.ListAfter(ctx, prefix, after, limit)
	return out, s.stalled(ctx, "list", prefix, err)
}

func (s *deadlines) Delete(ctx context.Context, key string) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	return s.stalled(ctx, "delete", key, s.Store.Delete(ctx, key))
}

func (s *deadlines) AbortIncomplete(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	n, err := s.Store.AbortIncomplete(ctx, prefix, olderThan)
	return n, s.stalled(ctx, "abort uploads under", prefix, err)
}

// Get runs its watchdog while the caller waits for the store (opening, then inside each
// Read), not while the caller works on what it read.
func (s *deadlines) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.get(ctx, key, s.Store.Get)
}

// GetRange is Get from byte off on, for a backend that can (Ranger).
func (s *deadlines) GetRange(ctx context.Context, key string, off int64, version string) (io.ReadCloser, error) {
	return s.get(ctx, key, func(ctx context.Context, key string) (io.ReadCloser, error) {
		return getRange(ctx, s.Store, key, off, version)
	})
}

func (s *deadlines) get(ctx context.Context, key string, open func(context.Context, string) (io.ReadCloser, error)) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := newWatchdog(s.timeout, cancel)
	rc, err := open(ctx, key)
	w.disarm()
	if err != nil {
		cancel(nil)
		return nil, s.stalled(ctx, "get", key, err)
	}
	return &stallReader{rc: rc, w: w, ctx: ctx, cancel: cancel, s: s, key: key}, nil
}

// Put runs its watchdog while the backend works (uploads parts, completes), not while it
// waits for the source to produce the next bytes.
func (s *deadlines) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := newWatchdog(s.timeout, cancel)
	defer w.disarm()
	n, err := s.Store.Put(context.WithValue(ctx, progressKey{}, w.touch), key, &sourceReader{r: r, w: w})
	return n, s.stalled(ctx, "put", key, err)
}

// watchdog cancels with ErrStalled when armed for longer than its timeout.
type watchdog struct {
	t     *time.Timer
	d     time.Duration
	mu    sync.Mutex
	armed bool
}

func newWatchdog(d time.Duration, cancel context.CancelCauseFunc) *watchdog {
	return &watchdog{t: time.AfterFunc(d, func() { cancel(ErrStalled) }), d: d, armed: true}
}

func (w *watchdog) arm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = true
	w.t.Reset(w.d)
}

func (w *watchdog) disarm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = false
	w.t.Stop()
}

// touch restarts the timeout if it runs: progress the backend reports while the caller
// waits for it, not while it waits for the source.
func (w *watchdog) touch() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.armed {
		w.t.Reset(w.d)
	}
}

type progressKey struct{}

// Progress tells the deadline of the Put that ctx belongs to that the backend moved bytes
// or got an answer: a multipart upload waits on its parts, not on its source, for long
// spells, and a part retried after a stall is progress too.
func Progress(ctx context.Context) {
	if touch, ok := ctx.Value(progressKey{}).(func()); ok {
		touch()
	}
}

type sourceReader struct {
	r io.Reader
	w *watchdog
}

func (r *sourceReader) Read(p []byte) (int, error) {
	r.w.disarm()
	defer r.w.arm()
	return r.r.Read(p)
}

type stallReader struct {
	rc     io.ReadCloser
	w      *watchdog
	ctx    context.Context
	cancel context.CancelCauseFunc
	s      *deadlines
	key    string
}

func (r *stallReader) Read(p []byte) (int, error) {
	r.w.arm()
	n, err := r.rc.Read(p)
	r.w.disarm()
	if err != nil && err != io.EOF {
		err = r.s.stalled(r.ctx, "read", r.key, err)
	}
	return n, err
}

// Version passes on what the backend's reader knows (Versioned), for retries to resume.
func (r *stallReader) Version() (string, int64) {
	if v, ok := r.rc.(Versioned); ok {
		return v.Version()
	}
	return "", -1
}

func (r *stallReader) Close() error {
	r.w.disarm()
	err := r.rc.Close()
	r.cancel(nil)
	return err
}
