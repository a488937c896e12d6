package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/pkg/v3/traceutil"
	"go.etcd.io/etcd/server/v3/lease"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.uber.org/zap"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Replayed is what a replay reached.
type Replayed struct {
	Revision  int64     `json:"revision"`
	Time      time.Time `json:"time"`
	Revisions int       `json:"revisions_replayed"`
	Events    int       `json:"events_replayed"`
	Keys      int64     `json:"key_count"` // live keys at Revision
}

// DefaultLeaseTTL is the TTL a replayed lease gets when the capture could not learn the
// original one (the lease was already gone, so its keys are deleted a few revisions later).
const DefaultLeaseTTL = 3600

// Replay rebuilds the state at a point after the base snapshot, in place: dbPath is a
// downloaded, verified copy of base (with or without etcd's sha256 trailer), and it ends
// as a bbolt file without trailer holding the state at targetRev, or at the last revision
// captured at or before targetTime.
//
// Each captured revision is applied as one write transaction of etcd's own MVCC store,
// the code etcd's apply loop runs for a committed Txn, so revision numbers, create
// revisions and versions come out identical; a revision that does not land on its
// original number stops the replay. Going through a server instead (an embedded etcd and
// one gRPC Txn per revision) gives the same bytes but runs at raft speed, a few thousand
// revisions a second, which makes a restore ten minutes into busy deltas take minutes.
//
// Leases: a key's lease is granted again with its id and the TTL the capture recorded
// (DefaultLeaseTTL if unknown). The replay never expires anything; as with any etcd
// restore, leases start counting down when the restored cluster elects a leader.
func Replay(ctx context.Context, st store.Store, base *snapshot.Manifest, segs []*delta.Manifest, targetRev int64, targetTime time.Time, dbPath string) (res *Replayed, err error) {
	if err := stripTrailer(dbPath); err != nil {
		return nil, err
	}
	lg := zap.NewNop()
	bcfg := backend.DefaultBackendConfig(lg)
	bcfg.Path = dbPath
	bcfg.UnsafeNoFsync = true // a scratch file: etcd's restore copies and syncs it
	be := backend.New(bcfg)
	// The cluster argument only matters for lease checkpoints, which nothing here takes.
	le := lease.NewLessor(lg, be, nil, lease.LessorConfig{MinLeaseTTL: 1})
	kv := mvcc.NewStore(lg, be, le, mvcc.StoreConfig{})
	defer func() {
		kv.Close()
		le.Stop()
		if cerr := be.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("writing the replayed state to %s: %w", dbPath, diskError(cerr, base.DBSize))
		}
	}()
	if kv.Rev() != base.Revision {
		return nil, fmt.Errorf("snapshot %s holds revision %d but its manifest says %d: it cannot be a base for the deltas", base.ID, kv.Rev(), base.Revision)
	}

	res = &Replayed{Revision: base.Revision, Time: base.CreatedAt}
	// Segments are read, checked and decoded ahead in another goroutine while this one
	// applies (on two cores that halves the wall time), and a segment is handed over only
	// once all of it matched its sha256: nothing unverified is ever applied.
	rctx, cancel := context.WithCancel(ctx)
	verified := make(chan []delta.Revision, 1)
	readErr := make(chan error, 1)
	go func() {
		defer close(verified)
		readErr <- readAhead(rctx, st, segs, base.History, base.Revision+1, verified)
	}()
	defer func() {
		cancel()
		for range verified { // let the reader finish before the backend closes
		}
	}()
	// The key count at the end, from the MVCC index, as `snapshot list` shows one for a
	// snapshot: a quick check for whoever starts the restored cluster.
	done := func() (*Replayed, error) {
		r, err := kv.Range(ctx, []byte{0}, []byte{}, mvcc.RangeOptions{CountOnly: true})
		if err != nil {
			return nil, fmt.Errorf("counting the replayed keys: %w", err)
		}
		res.Keys = int64(r.Count)
		return res, nil
	}
	for revs := range verified {
		for _, r := range revs {
			if (targetRev > 0 && r.Rev > targetRev) || (!targetTime.IsZero() && r.Time.After(targetTime)) {
				return done()
			}
			if err := apply(kv, le, r); err != nil {
				return nil, err
			}
			res.Revision, res.Time = r.Rev, r.Time
			res.Revisions++
			res.Events += len(r.Events)
		}
	}
	if err := <-readErr; err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !deltasEnd(err) {
			// The store failed (a cut connection, a stall, an error answer), not the
			// deltas: the point may well be reachable, and naming an earlier one would
			// send an operator to restore less than the store holds.
			return nil, fmt.Errorf("reading the deltas after revision %d: %w; the store failed, not the deltas: run the restore again", res.Revision, err)
		}
		return nil, fmt.Errorf("%w: the latest reachable point is revision %d (%s); a later snapshot may cover the rest (`etcdguard timeline`)",
			err, res.Revision, res.Time.UTC().Format(time.RFC3339))
	}
	return done()
}

// errMissing is wrapped when the segments do not chain.
var errMissing = errors.New("deltas are missing revisions")

// deltasEnd says err means the stored deltas end early (a segment missing, corrupt, of
// another history, one this restore cannot decrypt, or a hole in the chain) rather than a
// store that failed to deliver them.
func deltasEnd(err error) bool {
	return errors.Is(err, delta.ErrCorrupt) || errors.Is(err, store.ErrNotExist) || errors.Is(err, ErrUnreachable) || errors.Is(err, errMissing) ||
		errors.Is(err, crypt.ErrCorrupt) || errors.Is(err, crypt.ErrNoIdentity)
}

// readAhead sends, segment by segment and only once each matched its sha256, the
// revisions from next on; the segments must chain.
func readAhead(ctx context.Context, st store.Store, segs []*delta.Manifest, history string, next int64, out chan<- []delta.Revision) error {
	for _, seg := range segs {
		if seg.ToRev < next {
			continue
		}
		if seg.History != history {
			return fmt.Errorf("%w: delta segment %s belongs to history %q, the base snapshot to history %q: replaying it would mix two histories",
				ErrUnreachable, seg.Object, seg.History, history)
		}
		if seg.FromRev > next {
			return fmt.Errorf("%w %d to %d", errMissing, next, seg.FromRev-1)
		}
		var revs []delta.Revision
		err := delta.ReadSegment(ctx, st, seg, func(r delta.Revision) error {
			if r.Rev >= next {
				revs = append(revs, r)
			}
			return nil
		})
		if err != nil {
			return err
		}
		next = seg.ToRev + 1
		select {
		case out <- revs:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// apply writes one captured revision as one MVCC transaction.
func apply(kv mvcc.KV, le lease.Lessor, r delta.Revision) error {
	// Leases are granted first: a grant writes to the backend, which the open write
	// transaction would hold locked.
	for _, ev := range r.Events {
		if ev.Delete || ev.Lease == 0 || le.Lookup(lease.LeaseID(ev.Lease)) != nil {
			continue
		}
		ttl := ev.LeaseTTL
		if ttl <= 0 {
			ttl = DefaultLeaseTTL
		}
		if _, err := le.Grant(lease.LeaseID(ev.Lease), min(ttl, lease.MaxLeaseTTL)); err != nil {
			return fmt.Errorf("granting lease %x again for revision %d: %w", ev.Lease, r.Rev, err)
		}
	}
	txn := kv.Write(traceutil.TODO())
	for _, ev := range r.Events {
		if ev.Delete {
			txn.DeleteRange(ev.Key, nil)
		} else {
			txn.Put(ev.Key, ev.Value, lease.LeaseID(ev.Lease))
		}
	}
	txn.End()
	if got := kv.Rev(); got != r.Rev {
		return fmt.Errorf("replaying revision %d produced revision %d: the base snapshot and the deltas do not line up", r.Rev, got)
	}
	return nil
}

// stripTrailer removes the sha256 etcd appends to a snapshot (already verified), leaving
// the bbolt file the MVCC store opens.
func stripTrailer(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size()%512 == 32 {
		return os.Truncate(path, fi.Size()-32)
	}
	return nil
}
