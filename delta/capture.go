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
	// OnSegment and OnProgress feed metrics; both may be nil.
	OnSegment  func(*Manifest)
	OnProgress func(lastRev int64, lag time.Duration)
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

// Run captures until ctx ends, then writes what it buffered.
func (c *Capturer) Run(ctx context.Context) error {
	log := slog.With("component", "delta", "cluster", c.Cluster)
	rev, err := ResumeRevision(ctx, c.Store, c.Cluster)
	if err != nil {
		return fmt.Errorf("finding where delta capture resumes: %w", err)
	}
	if rev == 0 {
		if rev, err = c.Snapshot(ctx); err != nil {
			return fmt.Errorf("taking the full snapshot delta capture starts from: %w", err)
		}
	}
	for ctx.Err() == nil {
		next, err := c.watch(ctx, rev, log)
		if errors.Is(err, rpctypes.ErrCompacted) {
			// The revisions after rev are gone from etcd: a full snapshot bridges the gap.
			log.Error("etcd compacted past the last captured revision; taking a full snapshot to resume from", "revision", rev)
			if next, err = c.Snapshot(ctx); err != nil {
				return fmt.Errorf("resuming delta capture after compaction: %w", err)
			}
		} else if err != nil && ctx.Err() == nil {
			log.Warn("delta watch ended; resuming", "revision", next, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		rev = next
	}
	return nil
}

// watch captures revisions after rev until an error, and returns the last revision stored.
func (c *Capturer) watch(ctx context.Context, rev int64, log *slog.Logger) (int64, error) {
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
		rev, buf, size = m.ToRev, nil, 0
		if c.OnSegment != nil {
			c.OnSegment(m)
		}
		return nil
	}
	progress := func() {
		if c.OnProgress == nil {
			return
		}
		var lag time.Duration
		if len(buf) > 0 {
			lag = time.Since(buf[0].Time)
		}
		c.OnProgress(rev, lag)
	}
	t := time.NewTicker(c.Flush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			err := flush(context.WithoutCancel(ctx))
			return rev, err
		case <-t.C:
			if err := flush(ctx); err != nil {
				log.Warn("writing a delta segment failed; retrying", "err", err)
			}
			progress()
		case resp, ok := <-wch:
			if !ok {
				return rev, errors.Join(flush(ctx), errors.New("watch closed"))
			}
			if err := resp.Err(); err != nil {
				return rev, errors.Join(flush(ctx), err)
			}
			for _, r := range FromWatch(resp, time.Now()) {
				if n := len(buf); n > 0 && buf[n-1].Rev == r.Rev {
					buf[n-1].Events = append(buf[n-1].Events, r.Events...)
				} else {
					buf = append(buf, r)
				}
				for _, e := range r.Events {
					size += len(e.Key) + len(e.Value)
				}
			}
			if c.MaxBytes > 0 && size >= c.MaxBytes {
				if err := flush(ctx); err != nil {
					log.Warn("writing a delta segment failed; retrying", "err", err)
				}
			}
			progress()
		}
	}
}
