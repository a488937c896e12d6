package store

import (
	"context"
	"io"
	"time"
)

type fenceKey struct{}

// WithFence returns a context under which every write to a store opened through Wrap
// first asks check, and fails with its error: the daemon's leadership lease. It is a
// value, not a cancellation, so it also holds under context.WithoutCancel (the clean-up
// that stores what is buffered after a cancel), and check is asked right before each
// write, so a process that was stopped past its lease cannot slip one in before a timer
// had the chance to cancel it.
//
// check is called from several goroutines at once (a multipart upload's parts).
func WithFence(ctx context.Context, check func() error) context.Context {
	return context.WithValue(ctx, fenceKey{}, check)
}

// FenceErr is the fence's verdict for ctx (nil without a fence). Backends ask it once more
// right before the request that makes a write visible (a multipart upload's completion),
// which comes long after the last byte was read when the parts are slow.
func FenceErr(ctx context.Context) error {
	if check, ok := ctx.Value(fenceKey{}).(func() error); ok {
		return check()
	}
	return nil
}

// fenced refuses writes once the fence in their context is down. Reads are not fenced:
// they change nothing.
type fenced struct{ Store }

func (s fenced) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if err := FenceErr(ctx); err != nil {
		return 0, err
	}
	// Checked on every read too: an upload that resumes after the lease expired fails
	// before its next part, and so is aborted instead of completed.
	return s.Store.Put(ctx, key, &fencedReader{ctx: ctx, r: r})
}

func (s fenced) Delete(ctx context.Context, key string) error {
	if err := FenceErr(ctx); err != nil {
		return err
	}
	return s.Store.Delete(ctx, key)
}

func (s fenced) AbortIncomplete(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	if err := FenceErr(ctx); err != nil {
		return 0, err
	}
	return s.Store.AbortIncomplete(ctx, prefix, olderThan)
}

type fencedReader struct {
	ctx context.Context
	r   io.Reader
}

func (f *fencedReader) Read(p []byte) (int, error) {
	if err := FenceErr(f.ctx); err != nil {
		return 0, err
	}
	n, err := f.r.Read(p)
	if err == io.EOF {
		// The end of the stream is what completes an upload: check once more after the
		// read that may have waited long for the source.
		if ferr := FenceErr(f.ctx); ferr != nil {
			return n, ferr
		}
	}
	return n, err
}
