package delta

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

func sampleRevisions() []Revision {
	t0 := time.Date(2026, 11, 27, 2, 13, 5, 123456789, time.UTC)
	return []Revision{
		{Rev: 42, Time: t0, Events: []Event{{Key: []byte("/registry/pods/a"), Value: []byte("\x00k8s\xff binary"), CreateRev: 40, Version: 3}}},
		{Rev: 43, Time: t0.Add(time.Millisecond), Events: []Event{
			{Key: []byte("/registry/events/e1"), Value: []byte{}, CreateRev: 43, Version: 1, Lease: 0x6df4a21e850c8e18, LeaseTTL: 3600},
			{Delete: true, Key: []byte("/registry/pods/a")},
			{Key: []byte("/registry/big"), Value: bytes.Repeat([]byte("v"), 1<<20), CreateRev: 43, Version: 1},
		}},
		{Rev: 44, Time: t0.Add(time.Second), Events: []Event{{Delete: true, Key: []byte("/registry/events/e1")}}},
	}
}

func decodeAll(t *testing.T, r io.Reader) ([]Revision, error) {
	t.Helper()
	dec := newDecoder(r)
	var out []Revision
	for {
		rev, err := dec()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, rev)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	want := sampleRevisions()
	var buf bytes.Buffer
	enc, err := newEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range want {
		if err := enc.encode(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.flush(); err != nil {
		t.Fatal(err)
	}
	encoded := buf.Bytes()
	got, err := decodeAll(t, bytes.NewReader(encoded))
	if err != nil {
		t.Fatal(err)
	}
	// a put's empty value decodes as empty, not nil; compare what matters
	got[1].Events[0].Value = []byte{}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got[0], want[0])
	}
	// Every truncation is an error, never a silently shorter segment (except at a
	// revision boundary, which ReadSegment catches by the count of revisions).
	for cut := len(segMagic) + 1; cut < len(encoded); cut += 97 {
		got, err := decodeAll(t, bytes.NewReader(encoded[:cut]))
		if err == nil && len(got) == len(want) {
			t.Fatalf("cut at %d of %d: decoded everything", cut, len(encoded))
		}
	}
}

// Segments written as JSON lines, before the binary format, still read.
func TestCodecReadsJSONSegments(t *testing.T) {
	want := sampleRevisions()
	var buf bytes.Buffer
	for _, r := range want {
		if err := json.NewEncoder(&buf).Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := decodeAll(t, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || got[1].Events[0].LeaseTTL != 3600 || !got[2].Time.Equal(want[2].Time) || !got[1].Events[1].Delete {
		t.Fatalf("legacy segment read as %+v", got)
	}
}

func FuzzDecoder(f *testing.F) {
	var buf bytes.Buffer
	enc, _ := newEncoder(&buf)
	for _, r := range sampleRevisions()[:1] {
		enc.encode(r)
	}
	enc.flush()
	f.Add(buf.Bytes())
	f.Add([]byte(segMagic + "\x2a\x02\x01\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if !strings.HasPrefix(string(data), segMagic) {
			return
		}
		decodeAll(t, bytes.NewReader(data)) // must not panic or allocate without bound
	})
}

// A corrupt length is found only by the segment's sha256 at its end, so until then what a
// length claims must cost no more memory than the bytes that really arrive: a few bytes
// claiming a 1 GiB value, a 255 MiB one (under maxField) or 16 million events, read
// through zstd as segments are.
func TestDecoderAllocationsBoundedBySegment(t *testing.T) {
	header := segMagic + "\x2a\x02" // revision 42, time 1
	tests := []struct {
		name string
		data string
	}{
		{"1 GiB value", header + "\x01\x00\x01k" + string(binary.AppendUvarint(nil, 1<<30)) + "tiny"},
		{"255 MiB value", header + "\x01\x00\x01k" + string(binary.AppendUvarint(nil, 255<<20)) + "tiny"},
		{"255 MiB key", header + "\x01\x00" + string(binary.AppendUvarint(nil, 255<<20)) + "tiny"},
		{"16M events", header + string(binary.AppendUvarint(nil, 1<<24)) + "\x00\x01k\x00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var frame bytes.Buffer
			zw, _ := zstd.NewWriter(&frame)
			zw.Write([]byte(tc.data))
			zw.Close()
			zr := zdecoders.Get().(*zstd.Decoder)
			defer zdecoders.Put(zr)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			if err := zr.Reset(bytes.NewReader(frame.Bytes())); err != nil {
				t.Fatal(err)
			}
			_, err := decodeAll(t, zr)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("a corrupt segment decoded without error")
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
				t.Fatalf("decoding %d bytes allocated %d MiB (%v)", frame.Len(), alloc>>20, err)
			}
		})
	}
}
