package delta

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// segMagic starts every segment written in the binary format. Segments written before it
// are JSON lines, one Revision each, and are still read.
//
// The binary format is, per revision: uvarint rev, varint capture time (Unix ns), uvarint
// event count; per event: a flags byte (1: delete), uvarint key length and key, then for
// puts uvarint value length and value, and varints create revision, version, lease and
// lease TTL. It decodes about ten times faster than JSON (keys and values are not base64),
// which is what a replay of many revisions waits on.
const segMagic = "etcdguard-delta-v1\n"

// maxField bounds a key or value, and maxEvents a revision, so corrupt data (found only
// when the segment's sha256 is checked at its end) cannot make a huge allocation.
const (
	maxField  = 256 << 20
	maxEvents = 1 << 24
)

// zstd decoders are pooled: a new one allocates its window buffers (megabytes) for every
// segment, which was a third of a replay's CPU time. (Encoders are not: the daemon writes
// a segment every few seconds, and a pooled encoder's buffers stay live under its memory
// limit, which cost more GC than the allocation saves.)
var zdecoders = sync.Pool{New: func() any {
	d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	return d
}}

type encoder struct {
	w   *bufio.Writer
	tmp []byte
}

func newEncoder(w io.Writer) (*encoder, error) {
	e := &encoder{w: bufio.NewWriterSize(w, 64<<10)}
	_, err := e.w.WriteString(segMagic)
	return e, err
}

func (e *encoder) encode(r Revision) error {
	b := e.tmp[:0]
	b = binary.AppendUvarint(b, uint64(r.Rev))
	b = binary.AppendVarint(b, r.Time.UnixNano())
	b = binary.AppendUvarint(b, uint64(len(r.Events)))
	for _, ev := range r.Events {
		if ev.Delete {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = binary.AppendUvarint(b, uint64(len(ev.Key)))
		b = append(b, ev.Key...)
		if ev.Delete {
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(ev.Value)))
		b = append(b, ev.Value...)
		for _, v := range []int64{ev.CreateRev, ev.Version, ev.Lease, ev.LeaseTTL} {
			b = binary.AppendVarint(b, v)
		}
	}
	e.tmp = b
	_, err := e.w.Write(b)
	return err
}

func (e *encoder) flush() error { return e.w.Flush() }

// decoder reads revisions until io.EOF.
type decoder func() (Revision, error)

func newDecoder(r io.Reader) decoder {
	br := bufio.NewReaderSize(r, 64<<10)
	if head, _ := br.Peek(len(segMagic)); string(head) != segMagic {
		dec := json.NewDecoder(br)
		return func() (Revision, error) {
			var r Revision
			err := dec.Decode(&r)
			return r, err
		}
	}
	br.Discard(len(segMagic))
	return func() (Revision, error) { return decodeRevision(br) }
}

func decodeRevision(br *bufio.Reader) (Revision, error) {
	var r Revision
	rev, err := binary.ReadUvarint(br)
	if err != nil {
		return r, err // io.EOF here is the clean end
	}
	unexpected := func(err error) error {
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	ns, err := binary.ReadVarint(br)
	if err != nil {
		return r, unexpected(err)
	}
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return r, unexpected(err)
	}
	if n > maxEvents {
		return r, fmt.Errorf("revision %d claims %d events", rev, n)
	}
	// Events, like fields below, are allocated as they arrive: n is not checked until
	// the segment's sha256 is, so a corrupt n must cost no more than the bytes behind it.
	r.Rev, r.Time, r.Events = int64(rev), time.Unix(0, ns).UTC(), make([]Event, 0, min(n, 1024))
	field := func() ([]byte, error) {
		l, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, unexpected(err)
		}
		if l > maxField {
			return nil, fmt.Errorf("revision %d: a field of %d bytes", rev, l)
		}
		// Grown as the data arrives: a corrupt length over a short stream costs no more
		// memory than the stream itself.
		b := make([]byte, 0, min(l, 64<<10))
		for uint64(len(b)) < l {
			chunk := int(min(l-uint64(len(b)), 1<<20))
			b = slices.Grow(b, chunk)
			n, err := io.ReadFull(br, b[len(b):len(b)+chunk])
			b = b[:len(b)+n]
			if err != nil {
				return nil, unexpected(err)
			}
		}
		return b, nil
	}
	for range n {
		var ev Event
		flags, err := br.ReadByte()
		if err != nil {
			return r, unexpected(err)
		}
		ev.Delete = flags&1 != 0
		if ev.Key, err = field(); err != nil {
			return r, err
		}
		if !ev.Delete {
			if ev.Value, err = field(); err != nil {
				return r, err
			}
			for _, p := range []*int64{&ev.CreateRev, &ev.Version, &ev.Lease, &ev.LeaseTTL} {
				if *p, err = binary.ReadVarint(br); err != nil {
					return r, unexpected(err)
				}
			}
		}
		r.Events = append(r.Events, ev)
	}
	return r, nil
}
