package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
)

// blackHole accepts connections and never answers, like a store behind a broken load balancer.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return "http://" + l.Addr().String()
}

// Every call to a store that never answers fails with ErrStalled after the timeout.
func TestWrapTimeoutHungStore(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	srv.Endpoint = blackHole(t)
	const timeout = 500 * time.Millisecond
	st := store.Wrap(NewFromClient(srv.Client(t), srv.Bucket, "", srv.Options()), store.WrapOptions{Timeout: timeout})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a missing timeout fails, not hangs
	defer cancel()
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"Stat", func() error { _, err := st.Stat(ctx, "k"); return err }},
		{"List", func() error { _, err := st.List(ctx, "p/"); return err }},
		{"Walk", func() error { return store.Walk(ctx, st, "p/", "p/5", func(store.ObjectInfo) bool { return true }) }},
		{"Delete", func() error { return st.Delete(ctx, "k") }},
		{"Get", func() error { _, err := st.Get(ctx, "k"); return err }},
		{"Put", func() error { return store.PutBytes(ctx, st, "k", []byte("x")) }},
		{"AbortIncomplete", func() error { _, err := st.AbortIncomplete(ctx, "p/", 0); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := tt.call()
			took := time.Since(start)
			if !errors.Is(err, store.ErrStalled) {
				t.Fatalf("err = %v, want ErrStalled", err)
			}
			if took > timeout+2*time.Second {
				t.Errorf("took %s with a %s timeout", took, timeout)
			}
		})
	}
}

// slowSource yields its bytes with a pause before each read, like an etcd that is slow to stream.
type slowSource struct {
	r     io.Reader
	pause time.Duration
}

func (s *slowSource) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p[:min(len(p), 1<<20)])
}

// Waiting for the source is not a stall, and a download the caller reads slowly is not one
// either: only time waiting for the store counts.
func TestWrapTimeoutSlowSourceAndReader(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	const timeout = 300 * time.Millisecond
	st := store.Wrap(NewFromClient(srv.Client(t), srv.Bucket, "", store.Options{S3Endpoint: srv.Endpoint, PartSize: MinPartSize}), store.WrapOptions{Timeout: timeout})
	ctx := context.Background()
	data := bytes.Repeat([]byte("etcd"), 3<<20/4)
	if _, err := st.Put(ctx, "k", &slowSource{r: bytes.NewReader(data), pause: 2 * timeout}); err != nil {
		t.Fatalf("put from a slow source: %v", err)
	}
	rc, err := st.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got bytes.Buffer
	buf := make([]byte, 1<<20)
	for {
		n, err := rc.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("slow reader of a download: %v", err)
		}
		time.Sleep(2 * timeout)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read back %d bytes, want %d", got.Len(), len(data))
	}
}

// A write under a fence that falls mid-upload fails at its next read: the multipart upload
// is aborted, nothing appears, and a later write under the fallen fence is refused outright.
func TestWrapFence(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	st := store.Wrap(NewFromClient(srv.Client(t), srv.Bucket, "", store.Options{S3Endpoint: srv.Endpoint, PartSize: MinPartSize}), store.WrapOptions{})
	lost := errors.New("lease expired")
	var down atomic.Bool // the fence is asked from the parts' goroutines too
	ctx := store.WithFence(context.Background(), func() error {
		if down.Load() {
			return lost
		}
		return nil
	})
	src := &slowSource{r: bytes.NewReader(bytes.Repeat([]byte("x"), 3*MinPartSize)), pause: 0}
	reads := 0
	_, err := st.Put(ctx, "snap.db", readFunc(func(p []byte) (int, error) {
		if reads++; reads == 8 { // past the first part: a multipart upload is open
			down.Store(true)
		}
		return src.Read(p)
	}))
	if !errors.Is(err, lost) {
		t.Fatalf("put across the fence: err = %v, want %v", err, lost)
	}
	if open := srv.OpenUploads(t); len(open) != 0 {
		t.Errorf("open uploads after the fence fell: %v", open)
	}
	if _, err := st.Stat(context.Background(), "snap.db"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("stat of the fenced object: %v, want not found", err)
	}
	if err := store.PutBytes(ctx, st, "snap.json", []byte("{}")); !errors.Is(err, lost) {
		t.Errorf("manifest put after the fence fell: %v, want %v", err, lost)
	}
}

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }
