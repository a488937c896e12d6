package guard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/etcdguard/etcdguard/store"
)

// entry is one key in a plan (key and mod revision) or in a delete's saved copy (with its
// value). Keys and values are bytes, which JSON carries as base64, so nothing is lost.
type entry struct {
	Key   []byte `json:"k"`
	Mod   int64  `json:"m"`
	Value []byte `json:"v,omitempty"`
	Lease int64  `json:"l,omitempty"`
	// TTL is the granted TTL of Lease when the key was deleted, so undo can give the key
	// a lease again if Lease is gone by then.
	TTL int64 `json:"t,omitempty"`
}

// entryWriter streams entries as zstd-compressed JSON lines into a store object, so a plan
// over millions of keys never sits in memory. Nothing is visible under key until Close
// returns nil; Abort drops the upload.
type entryWriter struct {
	pw   *io.PipeWriter
	zw   *zstd.Encoder
	enc  *json.Encoder
	done chan error
}

func newEntryWriter(ctx context.Context, st store.Store, key string) (*entryWriter, error) {
	pr, pw := io.Pipe()
	zw, err := zstd.NewWriter(pw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20))
	if err != nil {
		return nil, err
	}
	w := &entryWriter{pw: pw, zw: zw, enc: json.NewEncoder(zw), done: make(chan error, 1)}
	go func() {
		_, err := st.Put(ctx, key, pr)
		pr.CloseWithError(err)
		w.done <- err
	}()
	return w, nil
}

func (w *entryWriter) write(e entry) error { return w.enc.Encode(e) }

func (w *entryWriter) Close() error {
	if err := w.zw.Close(); err != nil {
		w.pw.CloseWithError(err)
		<-w.done
		return err
	}
	w.pw.Close()
	return <-w.done
}

func (w *entryWriter) Abort(cause error) {
	w.pw.CloseWithError(cause)
	<-w.done
}

// readEntries calls fn for every entry in the object, in order.
func readEntries(ctx context.Context, st store.Store, key string, fn func(entry) error) error {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	zr, err := zstd.NewReader(rc, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer zr.Close()
	dec := json.NewDecoder(bufio.NewReader(zr))
	for {
		var e entry
		err := dec.Decode(&e)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", key, err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

// streamEntries reads the object's entries in the background: next returns the following
// one (false at the end or on an error), stop ends the reading and returns its error.
func streamEntries(ctx context.Context, st store.Store, key string) (next func() (entry, bool), stop func() error) {
	ch := make(chan entry, 256)
	errc := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		err := readEntries(ctx, st, key, func(e entry) error {
			select {
			case ch <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		close(ch)
		errc <- err
	}()
	next = func() (entry, bool) {
		e, ok := <-ch
		return e, ok
	}
	stop = func() error {
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
	return next, stop
}
