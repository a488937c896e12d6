package snapshot

import (
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compressions accepted by --compression.
var Compressions = []string{"zstd", "gzip", "none"}

// extension is the object name suffix for a compression.
func extension(compression string) string {
	switch compression {
	case "zstd":
		return ".db.zst"
	case "gzip":
		return ".db.gz"
	}
	return ".db"
}

// checkCompression validates --compression and --level before anything is streamed.
func checkCompression(compression, level string) error {
	switch compression {
	case "zstd", "gzip", "none":
	default:
		return fmt.Errorf("unknown --compression %q: use zstd, gzip or none", compression)
	}
	switch level {
	case "fastest", "default", "better":
	default:
		return fmt.Errorf("unknown --level %q: use fastest, default or better", level)
	}
	return nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// newEncoder compresses into w. Close flushes; it does not close w.
func newEncoder(w io.Writer, compression, level string) (io.WriteCloser, error) {
	if err := checkCompression(compression, level); err != nil {
		return nil, err
	}
	switch compression {
	case "zstd":
		lvl := map[string]zstd.EncoderLevel{
			"fastest": zstd.SpeedFastest, "default": zstd.SpeedDefault, "better": zstd.SpeedBetterCompression,
		}[level]
		// Two encoder goroutines and a 4 MiB window keep memory flat (a few tens of MiB
		// whatever the DB size) while leaving a core for sha256 and the upload.
		return zstd.NewWriter(w, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(2), zstd.WithWindowSize(4<<20))
	case "gzip":
		lvl := map[string]int{"fastest": gzip.BestSpeed, "default": gzip.DefaultCompression, "better": gzip.BestCompression}[level]
		return gzip.NewWriterLevel(w, lvl)
	}
	return nopWriteCloser{w}, nil
}

// newDecoder decompresses r.
func newDecoder(r io.Reader, compression string) (io.ReadCloser, error) {
	switch compression {
	case "zstd":
		// Two decoder goroutines: blocks are decoded while the caller hashes and writes
		// the ones before (restore and verify are otherwise one goroutine end to end).
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case "gzip":
		return gzip.NewReader(r)
	case "none":
		return io.NopCloser(r), nil
	}
	return nil, fmt.Errorf("unknown compression %q in manifest", compression)
}
