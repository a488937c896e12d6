package delta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
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
	// Snapshot takes a full snapshot now, of the given history ("": of the history etcd is
	// found in, as snapshot.SaveOptions.History with Identify), and returns its manifest:
	// where capture starts when there is nothing to resume from, when etcd's history
	// changed (a restore), or after etcd compacted past the last stored revision.
	Snapshot func(ctx context.Context, history string) (*snapshot.Manifest, error)
	// ObserveEvery is how often an idle capture records how far it has seen etcd
	// (Observed), so recent points stay reachable; default twice Flush, at least 1s.
	ObserveEvery time.Duration
	// Drain, when closed, makes Run store what it buffered and return (a graceful stop
	// while still leading). Cancelling Run's context instead stops it without writing:
	// that is what losing leadership does.
	Drain <-chan struct{}
	// OnSegment, OnProgress and OnTrouble feed metrics and alerts; all may be nil.
	OnSegment func(*Manifest)
	// OnProgress reports the last stored revision and the RPO (lag). stored says that
	// storing works: the report follows a flush that succeeded (or had nothing to store).
	OnProgress func(lastRev int64, lag time.Duration, stored bool)
	// OnTrouble reports why capture is interrupted: kind is "compacted" (revisions were
	// lost to compaction; a full snapshot bridged them), "new_history" (etcd was restored:
	// a new timeline starts with a full snapshot, nothing was lost) or "failing" (the watch
	// or the store fails; capture retries from the last stored revision).
	OnTrouble func(kind string, err error)

	id      Identity        // the history being captured
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
		case <-c.Drain:
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

// Run captures until ctx ends, then writes what it buffered. It does not give up: after
// a failure it reports it and resumes, with backoff, from the last revision stored.
func (c *Capturer) Run(ctx context.Context) {
	log := slog.With("component", "delta", "cluster", c.Cluster)
	backoff := time.Second
	for ctx.Err() == nil && !c.drained() {
		progressed, err := c.runOnce(ctx, log)
		if ctx.Err() != nil || c.drained() {
			break
		}
		if progressed {
			backoff = time.Second
		}
		if errors.Is(err, errDrained) {
			return
		}
		if errors.Is(err, errHistoryChanged) || errors.Is(err, rpctypes.ErrCompacted) {
			// The resume that follows at once finds out what happened and says so.
			log.Info("delta capture resuming at once", "reason", err)
			continue
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

// drained says whether Drain was closed.
func (c *Capturer) drained() bool {
	select {
	case <-c.Drain:
		return true
	default:
		return false
	}
}

// checkTimeout bounds a history check: capture checks before every segment, and an etcd
// that does not answer must make it fail and report, not wait forever.
const checkTimeout = 30 * time.Second

func (c *Capturer) check(ctx context.Context, m *Mark) (Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	return Check(ctx, c.Cli, m)
}

// drainTimeout bounds storing what was buffered on a graceful stop: etcd may be going down
// with the node, and the check before a segment is written needs it.
const drainTimeout = 10 * time.Second

func (c *Capturer) trouble(kind string, err error) {
	if c.OnTrouble != nil {
		c.OnTrouble(kind, err)
	}
}

// runOnce finds where capture resumes, checks that etcd still continues that history,
// and captures until an error; progressed says whether it stored anything.
func (c *Capturer) runOnce(ctx context.Context, log *slog.Logger) (progressed bool, err error) {
	if err := crypt.CheckWrite(ctx, c.Store, c.Cluster, "", false); err != nil {
		return false, err
	}
	from, err := c.resume(ctx, log)
	if err != nil {
		return false, err
	}
	next, err := c.watch(ctx, from)
	return next > from.Revision, err
}

// resume returns the point capture continues after, having set c.id: the last stored
// point of the current history if etcd continues it; else a full snapshot, in a new
// history if etcd's history changed (a restore) or in the same one if etcd compacted past it.
func (c *Capturer) resume(ctx context.Context, log *slog.Logger) (*Mark, error) {
	snap, seg, err := resumePoints(ctx, c.Store, c.Cluster)
	if err != nil {
		return nil, fmt.Errorf("finding where delta capture resumes: %w", err)
	}
	newest := snap
	if seg != nil && (snap == nil || seg.Revision >= snap.Revision) {
		newest = seg
	}
	var v Verdict
	switch {
	case newest == nil:
		return c.newTimeline(ctx, log, "", "no full snapshot yet")
	case newest.History == "":
		return c.newTimeline(ctx, log, "", "the stored snapshots and deltas predate histories")
	default:
		if v, err = c.check(ctx, newest); err != nil {
			return nil, fmt.Errorf("checking that etcd continues history %s: %w", newest.History, err)
		}
	}
	c.id = Identity{History: newest.History, ClusterID: v.ClusterID, RaftIndex: v.RaftIndex}
	if v.Undecided {
		// Chaining on could mix two histories; a new one costs only a boundary in the
		// timeline (the gap is there either way, and Compacted still reports it).
		v.Changed = fmt.Sprintf("etcd compacted past the %s, and with no member's raft log known it cannot be told from a restore", newest)
	}
	switch {
	case v.Changed != "":
		log.Warn("etcd's history changed (a restore?): starting a new timeline with a full snapshot", "why", v.Changed)
		c.trouble("new_history", errors.New(v.Changed))
		if v.Compacted { // could not tell a restore from a compaction: the gap is real either way
			c.trouble("compacted", fmt.Errorf("etcd compacted revisions after %d before they were captured, or was restored: %w", newest.Revision, rpctypes.ErrCompacted))
		}
		// The snapshot finds its history itself ("": the one a scheduled snapshot may have
		// started a moment ago, so one restore makes one new history), never the old one.
		m, err := c.newTimeline(ctx, log, "", v.Changed)
		// When it was only undecided, the snapshot's own check (through the member it
		// streamed from, whose raft log then bounds everything) may well find the same
		// history: that is a decision, not a contradiction.
		if err == nil && m.History == newest.History && !v.Undecided {
			err = fmt.Errorf("the full snapshot after etcd's history changed was filed under the old history %s; retrying", newest.History)
		}
		return m, err
	case v.Compacted:
		// The revisions after newest are gone from etcd: a full snapshot bridges the gap,
		// and points inside it can no longer be restored exactly.
		log.Error("etcd compacted past the last captured revision; taking a full snapshot to resume from", "revision", newest.Revision)
		c.trouble("compacted", fmt.Errorf("etcd compacted revisions after %d before they were captured: %w", newest.Revision, rpctypes.ErrCompacted))
		return c.newTimeline(ctx, log, newest.History, "")
	}
	if newest == snap && seg != nil {
		// A snapshot newer than the last segment (taken while capture was down): if etcd
		// still holds the revisions after the segment, resume there and leave no gap.
		if sv, err := c.check(ctx, seg); err == nil && sv.Changed == "" && !sv.Compacted {
			return seg, nil
		}
	}
	return newest, nil
}

// newTimeline takes a full snapshot in history ("": the one the snapshot finds etcd in,
// a new one after a restore) and resumes from it.
func (c *Capturer) newTimeline(ctx context.Context, log *slog.Logger, history, why string) (*Mark, error) {
	m, err := c.Snapshot(ctx, history)
	if err != nil {
		return nil, fmt.Errorf("taking the full snapshot delta capture starts from: %w", err)
	}
	if why != "" {
		log.Info("delta capture starts a new history", "history", m.History, "snapshot", m.ID, "revision", m.Revision, "why", why)
	}
	c.id = Identity{History: m.History, ClusterID: m.ClusterID, RaftIndex: m.RaftIndex}
	return snapshotMark(m), nil
}

// errDrained ends a capture that was asked to stop after storing what it buffered.
var errDrained = errors.New("delta capture drained")

// watch captures revisions after rev until an error, and returns the last revision stored.
// What it has buffered is bounded by MaxBytes: when the store refuses a flush, watch drops
// the buffer and returns, and the next attempt reads those revisions from etcd again.
//
// Before every segment is stored, etcd is checked to still continue the history: the
// client resumes a broken watch by itself, and after a restore onto the same endpoints it
// would go on delivering the new history's revisions as if they followed the old ones.
func (c *Capturer) watch(ctx context.Context, from *Mark) (int64, error) {
	rev := from.Revision
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.Cli.Watch(wctx, "", clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify(), clientv3.WithFragment())
	c.stored = rev
	var (
		buf  []Revision
		size int
		last = from // the last stored point, for the check before each flush
		// asked is when capture, idle with everything stored, last asked etcd for a
		// progress notification; observed when it last recorded one.
		asked, observed time.Time
	)
	flush := func(fctx context.Context) error {
		if len(buf) == 0 {
			return nil
		}
		v, err := c.check(fctx, last)
		if err != nil {
			return fmt.Errorf("checking etcd's history before storing revisions %d-%d: %w", buf[0].Rev, buf[len(buf)-1].Rev, err)
		}
		if v.Changed != "" {
			// What is buffered may be of either history: it is dropped, not mixed in.
			buf, size, c.pending = nil, 0, time.Time{}
			return fmt.Errorf("%w: %s", errHistoryChanged, v.Changed)
		}
		if v.RaftIndex > 0 {
			c.id.RaftIndex = v.RaftIndex
		}
		m, err := WriteSegment(fctx, c.Store, c.Cluster, c.id, buf)
		if err != nil {
			return err
		}
		rev, buf, size, c.pending, c.stored, last = m.ToRev, nil, 0, time.Time{}, m.ToRev, m.mark()
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
	observeEvery := c.ObserveEvery
	if observeEvery <= 0 {
		observeEvery = max(2*c.Flush, time.Second)
	}
	t := time.NewTicker(c.Flush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Lost leadership or shutdown: nothing more is written (another daemon may
			// lead already); the next leader reads the unstored revisions from etcd.
			return rev, ctx.Err()
		case <-c.Drain:
			dctx, cancel := context.WithTimeout(ctx, drainTimeout)
			err := flush(dctx)
			cancel()
			if err != nil {
				slog.WarnContext(ctx, "delta capture stopped without storing what it buffered; the next leader reads it from etcd", "err", err)
			}
			return rev, errDrained
		case <-t.C:
			if err := flush(ctx); err != nil {
				return rev, err
			}
			progress(true)
			if len(buf) == 0 && time.Since(asked) >= observeEvery && time.Since(observed) >= observeEvery {
				// Idle: make sure etcd still continues the history (a restore onto the
				// same endpoints may not break the watch, which the client resumes by
				// itself), then ask how far etcd is, to record it.
				v, err := c.check(ctx, last)
				if err != nil {
					return rev, fmt.Errorf("checking etcd's history while idle: %w", err)
				}
				if v.Changed != "" {
					return rev, fmt.Errorf("%w: %s", errHistoryChanged, v.Changed)
				}
				asked = time.Now()
				if err := c.Cli.RequestProgress(wctx); err != nil {
					asked = time.Time{}
				}
			}
		case resp, ok := <-wch:
			if !ok {
				return rev, errors.Join(flush(ctx), errors.New("watch closed"))
			}
			if err := resp.Err(); err != nil {
				return rev, errors.Join(flush(ctx), err)
			}
			if h := resp.Header; h.Revision < c.stored || fmt.Sprintf("%x", h.ClusterId) != c.id.ClusterID && c.id.ClusterID != "" {
				buf, size, c.pending = nil, 0, time.Time{}
				return rev, fmt.Errorf("%w: the watch answered at revision %d of cluster %x after revision %d of cluster %s was stored",
					errHistoryChanged, h.Revision, h.ClusterId, c.stored, c.id.ClusterID)
			}
			if resp.IsProgressNotify() {
				// At the time capture asked, etcd was at most at this revision; if every
				// revision up to it is stored, points up to that time are reachable.
				if !asked.IsZero() && time.Since(asked) < observeEvery && len(buf) == 0 && resp.Header.Revision == c.stored {
					err := WriteObserved(ctx, c.Store, c.Cluster, Observed{History: c.id.History, Revision: c.stored, Time: asked.UTC()})
					if err != nil {
						slog.WarnContext(ctx, "could not record how far delta capture observed etcd", "err", err)
					} else {
						observed = asked
					}
				}
				asked = time.Time{}
				continue
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
