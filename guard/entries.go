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
