package store

import (
	"context"
	"io"
	"sync"
	"time"
)

// Lazy is a store opened on first use, and again at each use until it opens. A daemon
// started while S3 is unreachable, before its bucket or credentials exist, must keep
// running, serve /metrics and page about it (EtcdguardStoreUnreachable, with open's
// error and its advice) rather than exit: a crash-looping static pod is scraped by no
// one and notifies no one. name is the store's URL without credentials.
func Lazy(name string, open func(context.Context) (Store, error)) Store {
	return &lazy{name: name, open: open}
}

type lazy struct {
	name string
	open func(context.Context) (Store, error)
	mu   sync.Mutex
	s    Store
	// The last failed open, given to callers for lazyRetry instead of opening again: every
	// check, snapshot run and delta flush asks, and each open may wait out the store's
	// timeout while the others queue behind it.
	err    error
	failed time.Time
}

// lazyRetry is how long a failed open answers for itself.
const lazyRetry = 5 * time.Second

func (l *lazy) get(ctx context.Context) (Store, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.s != nil {
		return l.s, nil
	}
	if l.err != nil && time.Since(l.failed) < lazyRetry {
		return nil, l.err
	}
	s, err := l.open(ctx)
	if err != nil {
		if ctx.Err() == nil { // the caller's own deadline says nothing about the store
			l.err, l.failed = err, time.Now()
		}
		return nil, err
	}
	l.s, l.err = s, nil
	return s, nil
}

func (l *lazy) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	s, err := l.get(ctx)
	if err != nil {
		return 0, err
	}
	return s.Put(ctx, key, r)
}

func (l *lazy) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	s, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return s.Get(ctx, key)
}

func (l *lazy) GetRange(ctx context.Context, key string, off int64, version string) (io.ReadCloser, error) {
	s, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return getRange(ctx, s, key, off, version)
}

func (l *lazy) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	s, err := l.get(ctx)
	if err != nil {
		return ObjectInfo{}, err
	}
	return s.Stat(ctx, key)
}

func (l *lazy) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	s, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return s.List(ctx, prefix)
}

func (l *lazy) ListAfter(ctx context.Context, prefix, after string, limit int) ([]ObjectInfo, error) {
	s, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return s.ListAfter(ctx, prefix, after, limit)
}

func (l *lazy) Delete(ctx context.Context, key string) error {
	s, err := l.get(ctx)
	if err != nil {
		return err
	}
	return s.Delete(ctx, key)
}

func (l *lazy) AbortIncomplete(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	s, err := l.get(ctx)
	if err != nil {
		return 0, err
	}
	return s.AbortIncomplete(ctx, prefix, olderThan)
}

func (l *lazy) String() string { return l.name }
