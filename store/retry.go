package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"
)

// ErrTransient marks a backend error that the same request may not meet again: a 5xx or
// SlowDown answer, a reset connection, a response cut short. Only these are retried;
// a missing object, a refused credential or a cancelled context never are.
var ErrTransient = errors.New("transient store error")

// Transient marks err as ErrTransient without changing its message.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return transientError{err}
}

type transientError struct{ error }

func (e transientError) Unwrap() []error { return []error{e.error, ErrTransient} }

// retryable reports whether another attempt may succeed where err failed. A call the
// deadline gave up on (ErrStalled) is one: the next connection may reach a healthy server.
func retryable(err error) bool {
	return errors.Is(err, ErrTransient) || errors.Is(err, ErrStalled)
}

// RetryPolicy is how often and how patiently a failed request is tried again.
type RetryPolicy struct {
	Attempts int           // in all, the first included
	Base     time.Duration // the first wait's ceiling; each wait is drawn from [0, ceiling), doubling
	Max      time.Duration // the largest ceiling
}

// DefaultRetry rides out what S3 documents as normal (503 SlowDown under load, a reset
// connection) within about 10 s of waits, then gives the caller the error. An attempt that
// stalled has also waited out its timeout: a store that stops answering fails a call after
// five of them, as a backup that fails is worse than one that is late.
var DefaultRetry = RetryPolicy{Attempts: 5, Base: 250 * time.Millisecond, Max: 8 * time.Second}

// Retry runs fn until it succeeds, fails with an error that is not retryable, ctx ends,
// or the policy's attempts run out. Waits are exponential with full jitter, so that
// daemons on every control-plane node do not retry in step. what names the request in
// the log line of each retry.
func Retry(ctx context.Context, p RetryPolicy, what string, fn func(context.Context) error) error {
	start := time.Now()
	ceiling := p.Base
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		if attempt >= p.Attempts {
			return fmt.Errorf("%w (gave up after %d attempts in %s)", err, attempt, time.Since(start).Round(time.Millisecond))
		}
		wait := time.Duration(rand.Int64N(int64(ceiling) + 1))
		ceiling = min(2*ceiling, p.Max)
		slog.Warn("store request failed; retrying", "request", what, "attempt", attempt, "wait", wait.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// Ranger is a backend that can reopen an object part way, for a read cut short to go on
// where it stopped rather than start again (an 8 GiB snapshot, at 90 %).
type Ranger interface {
	// GetRange opens key from byte off on. version is what Version said of the first
	// read: an object replaced since then fails, never mixing two objects' bytes.
	GetRange(ctx context.Context, key string, off int64, version string) (io.ReadCloser, error)
}

// getRange is s's GetRange, for a decorator that cannot know whether the store below it
// has one.
func getRange(ctx context.Context, s Store, key string, off int64, version string) (io.ReadCloser, error) {
	r, ok := s.(Ranger)
	if !ok {
		return nil, fmt.Errorf("get %s from byte %d: %s cannot read part of an object", key, off, s)
	}
	return r.GetRange(ctx, key, off, version)
}

// Versioned is a reader from a Ranger's Get that knows which version of the object it
// reads, and its size.
type Versioned interface {
	Version() (version string, size int64)
}

// retrying retries the calls that can be repeated as they are, and resumes reads cut
// short. Put is not retried here: its stream cannot be read twice, so a backend retries
// its own requests (S3: each part, and the completion).
type retrying struct {
	Store
	p RetryPolicy
}

func (s *retrying) Stat(ctx context.Context, key string) (info ObjectInfo, err error) {
	err = Retry(ctx, s.p, "stat "+key, func(ctx context.Context) error {
		info, err = s.Store.Stat(ctx, key)
		return err
	})
	return info, err
}

func (s *retrying) List(ctx context.Context, prefix string) (out []ObjectInfo, err error) {
	err = Retry(ctx, s.p, "list "+prefix, func(ctx context.Context) error {
		out, err = s.Store.List(ctx, prefix)
		return err
	})
	return out, err
}

func (s *retrying) ListAfter(ctx context.Context, prefix, after string, limit int) (out []ObjectInfo, err error) {
	err = Retry(ctx, s.p, "list "+prefix, func(ctx context.Context) error {
		out, err = s.Store.ListAfter(ctx, prefix, after, limit)
		return err
	})
	return out, err
}

// Writes ask the fence (WithFence) before each attempt, not only before the first: a
// daemon stopped during a backoff may wake up no longer the leader.

func (s *retrying) Delete(ctx context.Context, key string) error {
	return Retry(ctx, s.p, "delete "+key, func(ctx context.Context) error {
		if err := FenceErr(ctx); err != nil {
			return err
		}
		return s.Store.Delete(ctx, key)
	})
}

func (s *retrying) AbortIncomplete(ctx context.Context, prefix string, olderThan time.Duration) (n int, err error) {
	err = Retry(ctx, s.p, "abort uploads under "+prefix, func(ctx context.Context) error {
		if err := FenceErr(ctx); err != nil {
			return err
		}
		n, err = s.Store.AbortIncomplete(ctx, prefix, olderThan)
		return err
	})
	return n, err
}

func (s *retrying) Get(ctx context.Context, key string) (rc io.ReadCloser, err error) {
	err = Retry(ctx, s.p, "get "+key, func(ctx context.Context) error {
		rc, err = s.Store.Get(ctx, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	v, ok := rc.(Versioned)
	if !ok {
		return rc, nil
	}
	version, size := v.Version()
	if version == "" || size < 0 {
		return rc, nil
	}
	return &resuming{rc: rc, ctx: ctx, s: s, key: key, version: version, size: size}, nil
}

// resuming reopens the object where the read stopped when a read fails with a retryable
// error, as often as the policy allows without progress in between.
type resuming struct {
	rc      io.ReadCloser
	ctx     context.Context
	s       *retrying
	key     string
	version string
	size    int64
	off     int64
	cut     error // why the current response ended early, once its bytes are passed on
	stuck   int   // reopens since the last byte read
}

func (r *resuming) Read(p []byte) (int, error) {
	for {
		if r.cut != nil {
			if err := r.reopen(); err != nil {
				return 0, err
			}
		}
		n, err := r.rc.Read(p)
		r.off += int64(n)
		if n > 0 {
			r.stuck = 0
		}
		switch {
		case r.off > r.size:
			return n, fmt.Errorf("read %s: more than the %d bytes the store said it holds", r.key, r.size)
		case err == io.EOF && r.off < r.size:
			// A response that ends early may say so as a plain EOF (a TLS close_notify,
			// a body cut where a chunk ends): the size says what is missing.
			err = Transient(fmt.Errorf("response ended at byte %d of %d: %w", r.off, r.size, io.ErrUnexpectedEOF))
		case err == nil || err == io.EOF || !retryable(err) || r.ctx.Err() != nil:
			return n, err
		}
		// Cut short: what arrived is passed on now, the next Read reopens.
		r.rc.Close()
		r.rc, r.cut = io.NopCloser(errReader{err}), err // Close must not close the old body again
		if n > 0 {
			return n, nil
		}
	}
}

// reopen opens the object again from where the read stopped. It tries as often as the
// policy's attempts without a byte in between, with the policy's waits, and no more: one
// attempt per reopen, so a read that keeps stalling waits out the timeout that many times,
// not that many squared.
func (r *resuming) reopen() error {
	err := r.cut
	if r.stuck++; r.stuck >= r.s.p.Attempts {
		return fmt.Errorf("read %s at byte %d: %w (reopened %d times without a byte)", r.key, r.off, err, r.stuck-1)
	}
	if r.stuck > 1 {
		wait := time.Duration(rand.Int64N(int64(min(r.s.p.Base<<(r.stuck-2), r.s.p.Max)) + 1))
		select {
		case <-r.ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
	slog.Warn("store read cut short; resuming", "key", r.key, "offset", r.off, "size", r.size, "err", err)
	rc, rerr := getRange(r.ctx, r.s.Store, r.key, r.off, r.version)
	if rerr != nil && (!retryable(rerr) || r.ctx.Err() != nil) {
		r.rc = io.NopCloser(errReader{rerr})
		r.cut = nil
		return fmt.Errorf("read %s at byte %d: %w (resuming: %w)", r.key, r.off, err, rerr)
	}
	if rerr != nil {
		r.cut = rerr // try again at the next reopen
		return r.reopen()
	}
	r.rc, r.cut = rc, nil
	return nil
}

func (r *resuming) Close() error { return r.rc.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
