package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	errLeaseExpired = errors.New("the election lease may have expired: no keepalive answered in time (etcd unreachable, or this process was paused)")
	errSessionEnded = errors.New("the election session ended")
)

// leaseFence is the election lease as this process's own clock sees it. etcd's client
// notices an expired lease only when a keepalive fails, which a process that was paused
// (SIGSTOP, a long GC, a frozen VM) does only after it runs again, while another daemon
// may already lead. The fence counts from when the last successful keepalive was sent
// (the server renewed no earlier), less a margin, so it falls before etcd's expiry.
type leaseFence struct {
	base    time.Time // monotonic origin of expires
	margin  time.Duration
	expires atomic.Int64 // nanoseconds after base
	lost    atomic.Pointer[error]
}

func newLeaseFence(sent time.Time, ttl time.Duration) *leaseFence {
	f := &leaseFence{base: sent, margin: ttl / 5}
	f.renewed(sent, ttl)
	return f
}

func (f *leaseFence) renewed(sent time.Time, ttl time.Duration) {
	f.expires.Store(int64(sent.Sub(f.base) + ttl - f.margin))
}

func (f *leaseFence) left() time.Duration {
	return time.Duration(f.expires.Load()) - time.Since(f.base)
}

// check is the store fence (store.WithFence): nil while the lease surely holds.
func (f *leaseFence) check() error {
	if err := f.lost.Load(); err != nil {
		return *err
	}
	if f.left() <= 0 {
		return errLeaseExpired
	}
	return nil
}

func (f *leaseFence) lose(err error) { f.lost.CompareAndSwap(nil, &err) }

// keep renews the lease every ttl/4, measuring each renewal, and cancels the leader's
// context (with the reason) once the fence is down or the session ended. It returns when
// ctx is done.
func (f *leaseFence) keep(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, ttl time.Duration, sessDone <-chan struct{}, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(ttl / 10)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sessDone:
			f.lose(errSessionEnded)
		case <-tick.C:
		}
		if err := f.check(); err != nil {
			cancel(err)
			return
		}
		if time.Since(last) < ttl/4 {
			continue
		}
		last = time.Now()
		rctx, rcancel := context.WithTimeout(ctx, f.left())
		resp, err := cli.KeepAliveOnce(rctx, id)
		rcancel()
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			f.lose(fmt.Errorf("%w: etcd says the lease is gone", errLeaseExpired))
		case err == nil:
			f.renewed(last, time.Duration(resp.TTL)*time.Second)
		}
		// Other errors: etcd did not answer; the fence falls when the lease may expire.
	}
}

// leaderTerm is one stretch of leadership: everything only the leader does runs under
// ctx, which is cancelled the moment leadership may be gone, and end waits for all of it.
type leaderTerm struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	ended  bool
	runs   sync.WaitGroup
}

// start runs fn under the term unless the term is over; it says whether fn runs.
func (t *leaderTerm) start(fn func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ended || t.ctx.Err() != nil {
		return false
	}
	t.runs.Go(fn)
	return true
}

// end cancels what runs under the term and waits for it to stop.
func (t *leaderTerm) end(cause error) {
	t.mu.Lock()
	t.ended = true
	t.mu.Unlock()
	t.cancel(cause)
	t.runs.Wait()
}
