package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

var fast = store.RetryPolicy{Attempts: 5, Base: time.Millisecond, Max: 4 * time.Millisecond}

// flaky is a real file store whose calls fail with err until fails calls have failed.
type flaky struct {
	store.Store
	err   error
	fails atomic.Int32
	calls atomic.Int32
}

func (f *flaky) fail() error {
	f.calls.Add(1)
	if f.fails.Add(-1) >= 0 {
		return f.err
	}
	return nil
}

func (f *flaky) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	if err := f.fail(); err != nil {
		return store.ObjectInfo{}, err
	}
	return f.Store.Stat(ctx, key)
}

func (f *flaky) List(ctx context.Context, prefix string) ([]store.ObjectInfo, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return f.Store.List(ctx, prefix)
}

func (f *flaky) Delete(ctx context.Context, key string) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Delete(ctx, key)
}

func (f *flaky) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, key)
}

func newFileStore(t *testing.T) store.Store {
	t.Helper()
	s, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRetryOnlyTransient(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		fails     int
		wantCalls int
		wantErr   error // nil: the call succeeds
	}{
		{"transient twice", store.Transient(errors.New("503 SlowDown")), 2, 3, nil},
		{"transient four times", store.Transient(errors.New("connection reset")), 4, 5, nil},
		{"transient always", store.Transient(errors.New("500 InternalError")), 100, 5, store.ErrTransient},
		{"stalled once", fmt.Errorf("list: %w", store.ErrStalled), 1, 2, nil},
		{"stalled always", fmt.Errorf("list: %w", store.ErrStalled), 100, 5, store.ErrStalled},
		{"missing object", fmt.Errorf("get k: %w", store.ErrNotExist), 100, 1, store.ErrNotExist},
		{"access denied", fmt.Errorf("put k: %w", store.ErrAccessDenied), 100, 1, store.ErrAccessDenied},
		{"unmarked error", errors.New("disk full"), 100, 1, nil},
	}
	ops := map[string]func(context.Context, store.Store) error{
		"stat":   func(ctx context.Context, s store.Store) error { _, err := s.Stat(ctx, "k"); return err },
		"list":   func(ctx context.Context, s store.Store) error { _, err := s.List(ctx, ""); return err },
		"delete": func(ctx context.Context, s store.Store) error { return s.Delete(ctx, "k") },
		"get": func(ctx context.Context, s store.Store) error {
			rc, err := s.Get(ctx, "k")
			if err == nil {
				rc.Close()
			}
			return err
		},
	}
	for _, tt := range tests {
		for op, call := range ops {
			t.Run(tt.name+"/"+op, func(t *testing.T) {
				base := newFileStore(t)
				if err := store.PutBytes(t.Context(), base, "k", []byte("v")); err != nil {
					t.Fatal(err)
				}
				f := &flaky{Store: base, err: tt.err}
				f.fails.Store(int32(tt.fails))
				s := store.Wrap(f, store.WrapOptions{Retry: fast})
				err := call(t.Context(), s)
				if got := int(f.calls.Load()); got != tt.wantCalls {
					t.Errorf("%d calls, want %d (err %v)", got, tt.wantCalls, err)
				}
				switch {
				case tt.wantCalls > tt.fails && err != nil:
					t.Errorf("err = %v, want success after %d failures", err, tt.fails)
				case tt.wantCalls <= tt.fails && (err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr))):
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantCalls > 1 && tt.wantCalls <= tt.fails && !strings.Contains(fmt.Sprint(err), "gave up after") {
					t.Errorf("err = %v, want it to say it gave up after retrying", err)
				}
			})
		}
	}
}

func TestRetryStopsWithContext(t *testing.T) {
	f := &flaky{Store: newFileStore(t), err: store.Transient(errors.New("503 SlowDown"))}
	f.fails.Store(100)
	slow := store.RetryPolicy{Attempts: 10, Base: time.Hour, Max: time.Hour}
	s := store.Wrap(f, store.WrapOptions{Retry: slow})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Stat(ctx, "k")
	if !errors.Is(err, store.ErrTransient) || time.Since(start) > 5*time.Second {
		t.Errorf("Stat = %v after %s; want the transient error once ctx ended, not an hour's wait", err, time.Since(start))
	}
	calls := f.calls.Load()
	time.Sleep(50 * time.Millisecond)
	if f.calls.Load() != calls || calls > 2 {
		t.Errorf("%d calls, then %d: want no call after ctx ended", calls, f.calls.Load())
	}
	// Already cancelled: one call, no retry.
	f.calls.Store(0)
	cancelled, cancel2 := context.WithCancel(t.Context())
	cancel2()
	if _, err := s.List(cancelled, ""); err == nil || f.calls.Load() > 1 {
		t.Errorf("List with a cancelled ctx = %v after %d calls; want an error and no retry", err, f.calls.Load())
	}
}

// cutting is a Ranger over a real file store whose readers fail with a transient error
// after a random number of bytes, as a response cut short by the network does.
type cutting struct {
	store.Store
	rng     *rand.Rand
	version string
	cuts    atomic.Int32
	ranges  atomic.Int32
	maxCut  int
	eof     bool
}

type cutReader struct {
	io.ReadCloser
	left int
	c    *cutting
	etag string
	size int64
}

func (r *cutReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		r.c.cuts.Add(1)
		if r.c.eof { // as a TLS close_notify ends a response early: a plain EOF
			return 0, io.EOF
		}
		return 0, store.Transient(io.ErrUnexpectedEOF)
	}
	p = p[:min(len(p), r.left)]
	n, err := r.ReadCloser.Read(p)
	r.left -= n
	return n, err
}

func (r *cutReader) Version() (string, int64) { return r.etag, r.size }

func (c *cutting) open(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	info, err := c.Store.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	rc, err := c.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if _, err := io.CopyN(io.Discard, rc, off); err != nil {
		rc.Close()
		return nil, err
	}
	return &cutReader{ReadCloser: rc, left: c.rng.IntN(c.maxCut), c: c, etag: c.version, size: info.Size}, nil
}

func (c *cutting) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return c.open(ctx, key, 0)
}

func (c *cutting) GetRange(ctx context.Context, key string, off int64, version string) (io.ReadCloser, error) {
	c.ranges.Add(1)
	if version != c.version {
		return nil, errors.New("the object was replaced while it was being read")
	}
	return c.open(ctx, key, off)
}

func TestRetryResumesCutReads(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	data := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	c := &cutting{Store: newFileStore(t), rng: rng, version: "v1", maxCut: 512 << 10}
	if err := store.PutBytes(t.Context(), c.Store, "snap", data); err != nil {
		t.Fatal(err)
	}
	s := store.Wrap(c, store.WrapOptions{Retry: fast, Timeout: time.Minute})
	got, err := store.ReadAll(t.Context(), s, "snap", 1<<30)
	if err != nil {
		t.Fatalf("ReadAll through cut reads: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes that differ from the %d stored", len(got), len(data))
	}
	if c.cuts.Load() < 3 || c.ranges.Load() < c.cuts.Load()-1 {
		t.Errorf("%d cuts, %d resumes: the test cut too little to prove anything", c.cuts.Load(), c.ranges.Load())
	}
	t.Logf("%d cuts, %d resumes", c.cuts.Load(), c.ranges.Load())

	// Responses that end early saying only EOF: the size tells the read it is not done.
	c.eof = true
	c.cuts.Store(0)
	got, err = store.ReadAll(t.Context(), s, "snap", 1<<30)
	if err != nil || !bytes.Equal(got, data) || c.cuts.Load() < 3 {
		t.Fatalf("ReadAll through responses ended early by EOF: %d bytes, %v, after %d cuts; want the %d stored", len(got), err, c.cuts.Load(), len(data))
	}
	c.eof = false

	// The object replaced between the cut and the resume: an error, never a mix.
	c.version = "v2"
	rc, err := s.Get(t.Context(), "snap")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	c.version = "v3"
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("read across a replaced object = %v, want an error saying it was replaced", err)
	}

	// A response cut before its first byte every time: bounded, then the error.
	c.maxCut = 1
	c.version = "v1"
	if _, err := store.ReadAll(t.Context(), s, "snap", 1<<30); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read cut before any byte, always = %v; want the cut's error after a few resumes", err)
	}
}

// A write retried after the daemon lost its lease is refused, not sent: the fence is asked
// before each attempt.
func TestRetryAsksTheFenceEachAttempt(t *testing.T) {
	f := &flaky{Store: newFileStore(t), err: store.Transient(errors.New("503 SlowDown"))}
	f.fails.Store(100)
	s := store.Wrap(f, store.WrapOptions{Retry: fast})
	lost := errors.New("no longer the leader")
	var asked atomic.Int32
	ctx := store.WithFence(t.Context(), func() error {
		if asked.Add(1) > 2 { // the fenced layer's, then the first attempt's
			return lost
		}
		return nil
	})
	if err := s.Delete(ctx, "k"); !errors.Is(err, lost) || f.calls.Load() != 1 {
		t.Errorf("Delete = %v after %d calls; want the fence's error after the first attempt", err, f.calls.Load())
	}
}
