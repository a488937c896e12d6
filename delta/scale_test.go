package delta

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// counting counts the objects a store's listings return and the objects read.
type counting struct {
	store.Store
	listed, read atomic.Int64
}

func (c *counting) List(ctx context.Context, prefix string) ([]store.ObjectInfo, error) {
	objs, err := c.Store.List(ctx, prefix)
	c.listed.Add(int64(len(objs)))
	return objs, err
}

func (c *counting) ListAfter(ctx context.Context, prefix, after string, limit int) ([]store.ObjectInfo, error) {
	objs, err := c.Store.ListAfter(ctx, prefix, after, limit)
	c.listed.Add(int64(len(objs)))
	return objs, err
}

func (c *counting) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.read.Add(1)
	return c.Store.Get(ctx, key)
}

// month writes what a month of capture at a 5 s flush leaves, scaled to n segments: one
// history, a snapshot every hour (720 segments), the segments' manifests (their names are
// all a listing reads), and returns the store's directory.
func month(tb testing.TB, n int) (dir string, snaps []*snapshot.Manifest, last *Manifest) {
	tb.Helper()
	dir = tb.TempDir()
	hdir := filepath.Join(dir, "c1", "deltas", h1.History)
	for _, d := range []string{hdir, filepath.Join(dir, "c1", "snapshots")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "c1", "snapshots", "x.db.zst"), nil, 0o644); err != nil { // every snapshot's object
		tb.Fatal(err)
	}
	t0 := time.Now().Add(-time.Duration(n) * 5 * time.Second)
	const perRev = 10 // revisions per segment
	for i := range n {
		from := int64(i*perRev + 1)
		m := &Manifest{Cluster: "c1", History: h1.History, FromRev: from, ToRev: from + perRev - 1,
			FirstTime: t0.Add(time.Duration(i) * 5 * time.Second), LastTime: t0.Add(time.Duration(i)*5*time.Second + 4*time.Second), Revisions: perRev}
		m.Object = m.base() + ".seg.zst"
		body := []byte("{}") // only the last manifest is ever read
		if i == n-1 {
			m.SHA256 = "00"
			body = must(json.Marshal(m))
			last = m
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(manifestKey(m))), body, 0o644); err != nil {
			tb.Fatal(err)
		}
		if i%720 == 0 {
			s := &snapshot.Manifest{ID: fmt.Sprintf("%s-%06d", m.FirstTime.UTC().Format("20060102T150405Z"), i), Cluster: "c1", History: h1.History,
				Revision: from - 1, CreatedAt: m.FirstTime.Add(-time.Second), Object: "c1/snapshots/x.db.zst"}
			if err := os.WriteFile(filepath.Join(dir, "c1", "snapshots", s.ID+".json"), must(json.Marshal(s)), 0o644); err != nil {
				tb.Fatal(err)
			}
			snaps = append(snaps, s)
		}
	}
	return dir, snaps, last
}

// A month of segments: finding where capture resumes, and the segments a restore of a
// recent point needs, list only what follows the newest (or the base) snapshot, never
// the month; the timeline holds runs, not segments.
//
// make test runs it on 20,000 segments (creating the files is most of its time);
// BenchmarkMonthOfSegments, in make bench, on 200,000 (a month at a 5 s flush is 500,000).
func TestMonthOfSegments(t *testing.T) {
	const n = 20_000
	dir, snaps, last := month(t, n)
	fs := must(file.Open(dir))
	st := &counting{Store: fs}
	ctx := context.Background()

	snap, seg, err := resumePoints(ctx, st, "c1")
	if err != nil || seg == nil || seg.Revision != last.ToRev || snap.Revision != snaps[len(snaps)-1].Revision {
		t.Fatalf("resume points %+v, %+v, %v; want the last segment at %d", snap, seg, err, last.ToRev)
	}
	// the segments after the newest snapshot (up to an hour), the snapshots' manifests
	if l, r := st.listed.Load(), st.read.Load(); l > 720+2*int64(len(snaps)) || r > int64(len(snaps))+1 {
		t.Fatalf("finding where capture resumes listed %d objects and read %d, of %d segments", l, r, n)
	}
	// A point an hour and a half back: the segments from the snapshot before it, up to it.
	st.listed.Store(0)
	base := snaps[len(snaps)-3]
	target := base.Revision + 500
	segs := must(Segments(ctx, st, "c1", h1.History, base.Revision, func(m *Manifest) bool { return m.ToRev >= target }))
	if len(segs) != 50 || st.listed.Load() > 1000 {
		t.Fatalf("the segments to revision %d: %d, listing %d objects", target, len(segs), st.listed.Load())
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	stored := must(Load(ctx, fs, "c1"))
	runtime.GC()
	runtime.ReadMemStats(&after)
	if runs := stored.Runs[h1.History]; len(runs) != 1 || runs[0].segments != n {
		t.Fatalf("runs %+v", runs)
	}
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 1<<20 {
		t.Fatalf("the timeline of %d segments keeps %d bytes", n, grown)
	}
}

// BenchmarkMonthOfSegments measures, on 200,000 segments in the file store, finding where
// capture resumes and loading the timeline, and the heap each keeps.
func BenchmarkMonthOfSegments(b *testing.B) {
	dir, _, last := month(b, 200_000)
	fs := must(file.Open(dir))
	ctx := context.Background()
	var resume, timeline time.Duration
	var heap uint64
	for b.Loop() {
		t0 := time.Now()
		if _, seg, err := resumePoints(ctx, fs, "c1"); err != nil || seg.Revision != last.ToRev {
			b.Fatalf("resume: %v, %v", seg, err)
		}
		t1 := time.Now()
		stored := must(Load(ctx, fs, "c1"))
		resume, timeline = resume+t1.Sub(t0), timeline+time.Since(t1)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = max(heap, ms.HeapInuse)
		runtime.KeepAlive(stored)
	}
	b.ReportMetric(float64(resume.Milliseconds())/float64(b.N), "resume-ms/op")
	b.ReportMetric(float64(timeline.Milliseconds())/float64(b.N), "timeline-ms/op")
	b.ReportMetric(float64(heap>>20), "peak-heap-MiB")
}
