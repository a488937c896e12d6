package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// etcd ends every snapshot stream with the sha256 of everything before it.
const trailerSize = sha256.Size

// ErrTrailerMismatch means the data does not match the sha256 etcd appended to it.
var ErrTrailerMismatch = errors.New("etcd's sha256 trailer does not match the snapshot data")

// trailerSplitter passes all but the last trailerSize bytes it is given to body and keeps
// those last bytes, which are etcd's trailer once the stream has ended.
type trailerSplitter struct {
	body io.Writer
	tail []byte
}

func (t *trailerSplitter) Write(p []byte) (int, error) {
	n := len(p)
	if len(t.tail)+len(p) <= trailerSize {
		t.tail = append(t.tail, p...)
		return n, nil
	}
	// Everything beyond the final trailerSize bytes of tail+p is body.
	emit := len(t.tail) + len(p) - trailerSize
	fromTail := min(emit, len(t.tail))
	if _, err := t.body.Write(t.tail[:fromTail]); err != nil {
		return 0, err
	}
	if _, err := t.body.Write(p[:emit-fromTail]); err != nil {
		return 0, err
	}
	t.tail = append(t.tail[:0], t.tail[fromTail:]...)
	t.tail = append(t.tail, p[emit-fromTail:]...)
	return n, nil
}

// digest checks a raw etcd snapshot as it streams through: its size and sha256 (trailer
// included, so they equal an `etcdctl snapshot save` file), etcd's trailer, and the
// revision inside.
//
// One sha256 pass serves both sums: the body's sum is taken at the end, and then the
// trailer is added to the same state for the whole stream's sum.
type digest struct {
	size  int64
	body  hash.Hash
	split *trailerSplitter
	scan  *boltScanner
}

func newDigest() *digest {
	d := &digest{body: sha256.New(), scan: newBoltScanner()}
	d.split = &trailerSplitter{body: io.MultiWriter(d.body, d.scan)}
	return d
}

func (d *digest) Write(p []byte) (int, error) {
	d.size += int64(len(p))
	return d.split.Write(p)
}

// digestResult is what a complete stream proved about itself.
type digestResult struct {
	Size   int64
	SHA256 string
	scanResult
}

// finish checks the trailer and the bbolt structure once the stream has ended.
func (d *digest) finish() (digestResult, error) {
	bodySum := d.body.Sum(nil)
	d.body.Write(d.split.tail)
	r := digestResult{Size: d.size, SHA256: hex.EncodeToString(d.body.Sum(nil))}
	if len(d.split.tail) < trailerSize {
		return r, fmt.Errorf("snapshot is only %d bytes, too short to be an etcd snapshot", d.size)
	}
	if !bytes.Equal(bodySum, d.split.tail) {
		return r, ErrTrailerMismatch
	}
	sr, err := d.scan.result()
	r.scanResult = sr
	if err != nil {
		return r, fmt.Errorf("reading the revision from the snapshot's bbolt pages: %w", err)
	}
	return r, nil
}

// digestBehind feeds a digest from a goroutine of its own, so hashing runs beside what
// the caller does with the same bytes: a restore's download hashed and wrote a GiB in
// turn, on two cores that could do both at once. Writes copy into a few reused buffers.
type digestBehind struct {
	d          *digest
	full, free chan []byte
	done       chan struct{}
	closed     bool
}

func newDigestBehind() *digestBehind {
	b := &digestBehind{d: newDigest(), full: make(chan []byte, 4), free: make(chan []byte, 8), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		for p := range b.full {
			b.d.Write(p) // never fails: a bad snapshot shows in finish
			select {
			case b.free <- p:
			default:
			}
		}
	}()
	return b
}

func (b *digestBehind) Write(p []byte) (int, error) {
	var buf []byte
	select {
	case buf = <-b.free:
	default:
	}
	b.full <- append(buf[:0], p...)
	return len(p), nil
}

// stop ends the goroutine once it has hashed everything written; finish calls it, and a
// caller giving up early defers it.
func (b *digestBehind) stop() {
	if !b.closed {
		b.closed = true
		close(b.full)
	}
	<-b.done
}

func (b *digestBehind) finish() (digestResult, error) {
	b.stop()
	return b.d.finish()
}
