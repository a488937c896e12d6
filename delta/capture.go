package delta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Capturer watches the whole keyspace and writes segments. One capturer runs per cluster:
// the daemon runs it only while it leads.
type Capturer struct {
	Cli      *clientv3.Client
	Store    store.Store
	Cluster  string
	Flush    time.Duration // a segment at least this often while there are changes
	MaxBytes int           // or sooner, when this much is buffered
	// Snapshot takes a full snapshot now and returns its revision: where capture starts
	// when there is nothing to resume from, or after etcd compacted past it.
	Snapshot func(ctx context.Context) (int64, error)
	// OnSegment, OnProgress and OnTrouble feed metrics and alerts; all may be nil.
	OnSegment func(*Manifest)
	// OnProgress reports the last stored revision and the RPO (lag). stored says that
	// storing works: the report follows a flush that succeeded (or had nothing to store).
	OnProgress func(lastRev int64, lag time.Duration, stored bool)
	// OnTrouble reports why capture is interrupted: kind is "compacted" (revisions were
	// lost to compaction; a full snapshot bridged them) or "failing" (the watch or the
	// store fails; capture retries from the last stored revision).
	OnTrouble func(kind string, err error)

	ttls    map[int64]int64 // lease id → granted TTL, as asked from etcd
	pending time.Time       // capture time of the oldest change not yet stored
	stored  int64           // the last revision stored (or the snapshot capture resumed from)
	// seen records, for revisions captured but not yet stored, when they were first seen:
	// every revision up to rev by t. A revision read again after an interruption keeps
	// that time, not the time of the catch-up, so `restore --at` stays exact.
	seen []seenAt
}

type seenAt struct {
	rev    int64
	t      time.Time
	opened time.Time // the record covers at most 100 ms of capture
}

// firstSeen gives revisions seen before an interruption the time they were first seen,
// and records when the newest of revs was.
func (c *Capturer) firstSeen(revs []Revision) {
	if len(revs) == 0 {
		return
	}
	i := 0
	for j := range revs {
		for i < len(c.seen) && c.seen[i].rev < revs[j].Rev {
			i++
		}
		if i == len(c.seen) {
			break
		}
		revs[j].Time = c.seen[i].t
	}
	c.note(revs[len(revs)-1].Rev, revs[len(revs)-1].Time)
}

// note records that etcd had reached rev by t.
func (c *Capturer) note(rev int64, t time.Time) {
	n := len(c.seen)
	switch {
	case rev <= c.stored || n > 0 && c.seen[n-1].rev >= rev:
	case n > 0 && t.Sub(c.seen[n-1].opened) < 100*time.Millisecond:
		// one record per 100 ms; its time moves later, never earlier, so `--at` never
		// includes a revision seen after the time asked for
		c.seen[n-1].rev, c.seen[n-1].t = rev, t
	default:
		c.seen = append(c.seen, seenAt{rev: rev, t: t, opened: t})
	}
}

// observe waits d, noting every 100 ms which revision etcd is at: revisions committed
// while capture waits to retry keep (within 100 ms) the time they happened.
func (c *Capturer) observe(ctx context.Context, d time.Duration) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	end := time.After(d)
	for {
		select {
		case <-ctx.Done():
			return
		case <-end:
			return
		case <-t.C:
			gctx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := c.Cli.Get(gctx, "\x00", clientv3.WithCountOnly(), clientv3.WithSerializable())
			cancel()
			if err == nil {
				c.note(resp.Header.Revision, time.Now())
			}
		}
	}
}

// ResumeRevision is the revision after which capture continues: the last stored segment's
// end, else the newest full snapshot's revision; 0 if there is neither.
func ResumeRevision(ctx context.Context, st store.Store, cluster string) (int64, error) {
	segs, err := List(ctx, st, cluster)
	if err != nil {
		return 0, err
	}
	snaps, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return 0, err
	}
	var rev int64
	if len(segs) > 0 {
		rev = segs[len(segs)-1].ToRev
	}
	if len(snaps) > 0 && snaps[0].Revision > rev {
		rev = snaps[0].Revision
	}
	return rev, nil
}

// Run captures until ctx ends, then writes what it buffered. It does not give up: after
// a failure it reports it and resumes, with backoff, from the last revision stored.
func (c *Capturer) Run(ctx context.Context) {
	log := slog.With("component", "delta", "cluster", c.Cluster)
	backoff := time.Second
	for ctx.Err() == nil {
		progressed, err := c.runOnce(ctx, log)
		if ctx.Err() != nil {
			break
		}
		if progressed {
			backoff = time.Second
		}
		log.Warn("delta capture interrupted; resuming from the last stored revision", "in", backoff, "err", err)
		if c.OnProgress != nil && !c.pending.IsZero() {
			// what was captured is not stored, so the RPO keeps growing
			c.OnProgress(c.stored, time.Since(c.pending), false)
		}
		c.trouble("failing", err)
		c.observe(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (c *Capturer) trouble(kind string, err error) {
	if c.OnTrouble != nil {
		c.OnTrouble(kind, err)
	}
}

// runOnce resumes from the store and captures until an error; progressed says whether it
// stored anything.
func (c *Capturer) runOnce(ctx context.Context, log *slog.Logger) (progressed bool, err error) {
	rev, err := ResumeRevision(ctx, c.Store, c.Cluster)
	if err != nil {
		return false, fmt.Errorf("finding where delta capture resumes: %w", err)
	}
	if rev == 0 {
		if rev, err = c.Snapshot(ctx); err != nil {
			return false, fmt.Errorf("taking the full snapshot delta capture starts from: %w", err)
		}
	}
	start := rev
	for {
		c.stored = rev
		next, err := c.watch(ctx, rev)
		progressed = progressed || next > start
		if !errors.Is(err, rpctypes.ErrCompacted) {
			return progressed, err
		}
		// The revisions after next are gone from etcd: a full snapshot bridges the gap,
		// and points inside it can no longer be restored exactly.
		log.Error("etcd compacted past the last captured revision; taking a full snapshot to resume from", "revision", next)
		c.trouble("compacted", fmt.Errorf("etcd compacted revisions after %d before they were captured: %w", next, err))
		if rev, err = c.Snapshot(ctx); err != nil {
			return progressed, fmt.Errorf("resuming delta capture after compaction: %w", err)
		}
	}
}

// watch captures revisions after rev until an error, and returns the last revision stored.
// What it has buffered is bounded by MaxBytes: when the store refuses a flush, watch drops
// the buffer and returns, and the next attempt reads those revisions from etcd again.
func (c *Capturer) watch(ctx context.Context, rev int64) (int64, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.Cli.Watch(wctx, "", clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify(), clientv3.WithFragment())
	var buf []Revision
	size := 0
	flush := func(fctx context.Context) error {
		if len(buf) == 0 {
			return nil
		}
		m, err := WriteSegment(fctx, c.Store, c.Cluster, buf)
		if err != nil {
			return err
		}
		rev, buf, size, c.pending, c.stored = m.ToRev, nil, 0, time.Time{}, m.ToRev
		for len(c.seen) > 0 && c.seen[0].rev <= rev {
			c.seen = c.seen[1:]
		}
		if c.OnSegment != nil {
			c.OnSegment(m)
		}
		return nil
	}
	progress := func(stored bool) {
		if c.OnProgress == nil {
			return
		}
		var lag time.Duration
		if !c.pending.IsZero() {
			lag = time.Since(c.pending)
		}
		c.OnProgress(rev, lag, stored)
	}
	t := time.NewTicker(c.Flush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Shutdown or lost leadership: store what was captured, within reason.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			err := flush(fctx)
			return rev, err
		case <-t.C:
			if err := flush(ctx); err != nil {
				return rev, err
			}
			progress(true)
		case resp, ok := <-wch:
			if !ok {
				return rev, errors.Join(flush(ctx), errors.New("watch closed"))
			}
			if err := resp.Err(); err != nil {
				return rev, errors.Join(flush(ctx), err)
			}
			revs := FromWatch(resp, time.Now())
			c.firstSeen(revs)
			c.leaseTTLs(ctx, revs)
			full := func() bool { return c.MaxBytes > 0 && size >= c.MaxBytes }
			for _, r := range revs {
				if n := len(buf); n > 0 && buf[n-1].Rev == r.Rev {
					buf[n-1].Events = append(buf[n-1].Events, r.Events...)
				} else {
					// A catch-up response can hold many revisions: cut segments at
					// revision boundaries inside it too.
					if full() {
						if err := flush(ctx); err != nil {
							return rev, err
						}
					}
					buf = append(buf, r)
					if c.pending.IsZero() {
						c.pending = r.Time
					}
				}
				for _, e := range r.Events {
					size += len(e.Key) + len(e.Value)
				}
			}
			if full() {
				if err := flush(ctx); err != nil {
					return rev, err
				}
			}
			progress(false)
		}
	}
}

// leaseTTLs records each leased key's lease TTL, asking etcd once per lease (the watch
// carries only the id), so a replay grants the lease again as it was.
func (c *Capturer) leaseTTLs(ctx context.Context, revs []Revision) {
	if c.ttls == nil || len(c.ttls) > 1<<16 {
		c.ttls = map[int64]int64{}
	}
	for i := range revs {
		for j := range revs[i].Events {
			e := &revs[i].Events[j]
			if e.Lease == 0 {
				continue
			}
			ttl, ok := c.ttls[e.Lease]
			if !ok {
				tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := c.Cli.TimeToLive(tctx, clientv3.LeaseID(e.Lease))
				cancel()
				if err != nil {
					continue // the replay falls back to DefaultLeaseTTL; the next event asks again
				}
				ttl = resp.GrantedTTL
				c.ttls[e.Lease] = ttl
			}
			e.LeaseTTL = ttl
		}
	}
}
