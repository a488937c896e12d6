package main

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
)

// codec is one compressor of the compress section.
type codec struct {
	name string
	new  func(io.Writer) (io.WriteCloser, error)
}

// codecs: zstd as etcdguard's snapshot/compress.go sets it up (two encoder goroutines, a
// 4 MiB window) at its three levels, the standard library's gzip, and none.
var codecs = []codec{
	{"none", func(w io.Writer) (io.WriteCloser, error) { return nopCloser{w}, nil }},
	{"zstd fastest (etcdguard's default)", zstdLevel(zstd.SpeedFastest)},
	{"zstd default", zstdLevel(zstd.SpeedDefault)},
	{"zstd better", zstdLevel(zstd.SpeedBetterCompression)},
	{"gzip -1", gzipLevel(1)},
	{"gzip -6", gzipLevel(6)},
}

func zstdLevel(l zstd.EncoderLevel) func(io.Writer) (io.WriteCloser, error) {
	return func(w io.Writer) (io.WriteCloser, error) {
		return zstd.NewWriter(w, zstd.WithEncoderLevel(l), zstd.WithEncoderConcurrency(2), zstd.WithWindowSize(4<<20))
	}
}

func gzipLevel(l int) func(io.Writer) (io.WriteCloser, error) {
	return func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriterLevel(w, l) }
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// compressFile compresses path with c into a counter: the compressed size, wall and CPU
// seconds (of this process, which does nothing else meanwhile).
func compressFile(ctx context.Context, path string, c codec) (n int64, wall, cpu float64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	var cw countWriter
	c0, t0 := selfCPU(), time.Now()
	enc, err := c.new(&cw)
	if err != nil {
		return 0, 0, 0, err
	}
	buf := make([]byte, 1<<20)
	for {
		if ctx.Err() != nil {
			return 0, 0, 0, ctx.Err()
		}
		k, rerr := f.Read(buf)
		if k > 0 {
			if _, err := enc.Write(buf[:k]); err != nil {
				return 0, 0, 0, fmt.Errorf("%s: %w", c.name, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return 0, 0, 0, fmt.Errorf("read %s: %w", path, rerr)
		}
	}
	if err := enc.Close(); err != nil {
		return 0, 0, 0, fmt.Errorf("%s: %w", c.name, err)
	}
	return cw.n, time.Since(t0).Seconds(), selfCPU() - c0, nil
}

// runCompress compresses etcdctl's snapshot file in process with each codec, alternating
// codecs round by round like the other sections.
func (e *env) runCompress(ctx context.Context, w *world) ([]Result, error) {
	// Read it once so that every codec reads it from the page cache.
	if _, _, _, err := compressFile(ctx, w.snapFile, codecs[0]); err != nil {
		return nil, err
	}
	walls := make([][]float64, len(codecs))
	cpus := make([][]float64, len(codecs))
	sizes := make([]int64, len(codecs))
	for r := 0; r < e.opts.runs; r++ {
		for i, c := range codecs {
			n, wall, cpu, err := compressFile(ctx, w.snapFile, c)
			if err != nil {
				return nil, fmt.Errorf("compress %s: %w", w.size, err)
			}
			walls[i], cpus[i], sizes[i] = append(walls[i], wall), append(cpus[i], cpu), n
			e.logf("  compress       %-44s run %d: %6.2fs  cpu %6.2fs  ratio %.2f", c.name, r+1, wall, cpu, float64(w.dbBytes)/float64(n))
		}
	}
	var res []Result
	for i, c := range codecs {
		r := Result{Section: "compress", Contender: c.name, Size: w.size, Server: w.etcd.version, Order: i, DBBytes: w.dbBytes,
			Runs: len(walls[i]), Walls: walls[i], WallS: median(walls[i]), ClientCPUS: median(cpus[i]),
			Extra: map[string]float64{"ratio": float64(w.dbBytes) / float64(sizes[i]), "stored_mib": float64(sizes[i]) / (1 << 20)}}
		r.MiBps = float64(w.dbBytes) / (1 << 20) / r.WallS
		res = append(res, r)
	}
	return res, nil
}
