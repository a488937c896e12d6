package delta

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// A history is one continuous run of an etcd keyspace's revisions. A restore starts a new
// one under the same cluster name: with or without --bump-revision, with a fresh cluster
// token or the old one (which keeps the cluster ID). Snapshots and segments record their
// history, capture never chains segments across two, and a replay never applies a segment
// of another history than its base: the revisions could line up and mix two histories.

// NewHistory returns a new history id: <YYYYMMDDTHHMMSSZ>-<6 hex>, sorting by start time.
func NewHistory(t time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Mark is a stored point of a history: where a snapshot or a segment ends, and what tells
// whether etcd still continues it.
type Mark struct {
	History   string
	ClusterID string
	Revision  int64
	Time      time.Time
	RaftIndex uint64
	Tail      []snapshot.TailKey
	Snapshot  string // the snapshot's id, if the mark is a snapshot
}

func snapshotMark(s *snapshot.Manifest) *Mark {
	return &Mark{History: s.History, ClusterID: s.ClusterID, Revision: s.Revision, Time: s.CreatedAt, RaftIndex: s.RaftIndex, Tail: s.Tail, Snapshot: s.ID}
}

func (m *Mark) String() string {
	if m.Snapshot != "" {
		return fmt.Sprintf("snapshot %s (history %s, revision %d)", m.Snapshot, m.History, m.Revision)
	}
	return fmt.Sprintf("delta segment ending at revision %d (history %s)", m.Revision, m.History)
}

// Verdict is what Check found.
type Verdict struct {
	// Changed says why etcd no longer continues the mark's history ("" if it does, as far
	// as etcd can tell).
	Changed string
	// Compacted says that etcd no longer holds the revisions right after the mark.
	Compacted bool
	// Undecided says that nothing tells a compaction past the mark from a restore with the
	// old token and --bump-revision: no content left to compare at the mark, and the raft
	// log of no member known to bound it. Resuming there could mix two histories.
	Undecided bool
	// Revision, ClusterID and RaftIndex are etcd's when checked (RaftIndex 0: unknown).
	Revision  int64
	ClusterID string
	RaftIndex uint64
}

// tailSamples is how many keys of a stored revision its manifest samples.
const tailSamples = 4

// tailSum digests what a key held at a revision.
func tailSum(value []byte, create, version, lease int64) string {
	h := sha256.New()
	var b [24]byte
	binary.BigEndian.PutUint64(b[0:], uint64(create))
	binary.BigEndian.PutUint64(b[8:], uint64(version))
	binary.BigEndian.PutUint64(b[16:], uint64(lease))
	h.Write(b[:])
	h.Write(value)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// tailOf samples the keys a captured revision wrote or deleted.
func tailOf(r Revision) []snapshot.TailKey {
	var out []snapshot.TailKey
	for _, e := range r.Events[:min(len(r.Events), tailSamples)] {
		if e.Delete {
			out = append(out, snapshot.TailKey{Key: e.Key, Deleted: true})
		} else {
			out = append(out, snapshot.TailKey{Key: e.Key, Sum: tailSum(e.Value, e.CreateRev, e.Version, e.Lease)})
		}
	}
	return out
}

// errHistoryChanged is what the watch returns when etcd's answers show another history.
var errHistoryChanged = errors.New("etcd's history changed")

// Check tells whether the etcd behind cli continues the history m belongs to. It asks for
// a linearizable read (so the member answering has everything committed), then compares:
// the cluster ID, the revision (a restore without --bump-revision goes back), the raft
// log's committed index (a restore starts a new raft log, even with the old token), and
// the keys the mark's revision wrote, read at that revision.
func Check(ctx context.Context, cli *clientv3.Client, m *Mark) (Verdict, error) {
	rctx := clientv3.WithRequireLeader(ctx)
	resp, err := cli.Get(rctx, "\x00", clientv3.WithCountOnly())
	if err != nil {
		return Verdict{}, fmt.Errorf("reading etcd's revision: %w", err)
	}
	v := Verdict{Revision: resp.Header.Revision, ClusterID: fmt.Sprintf("%x", resp.Header.ClusterId)}
	if m.ClusterID != "" && v.ClusterID != m.ClusterID {
		v.Changed = fmt.Sprintf("etcd's cluster ID is %s, the %s was taken from %s", v.ClusterID, m, m.ClusterID)
		return v, nil
	}
	if v.Revision < m.Revision {
		v.Changed = fmt.Sprintf("etcd's revision went back to %d, below the %s", v.Revision, m)
		return v, nil
	}
	idx, raftKnown := committedIndex(ctx, cli)
	if raftKnown {
		v.RaftIndex = idx
	}
	if v.RaftIndex > 0 && m.RaftIndex > 0 && v.RaftIndex < m.RaftIndex {
		v.Changed = fmt.Sprintf("etcd's raft log went back to index %d, below the %d of the %s (a restore starts a new log)", v.RaftIndex, m.RaftIndex, m)
		return v, nil
	}
	if v.Revision > m.Revision {
		_, err := cli.Get(rctx, "\x00", clientv3.WithCountOnly(), clientv3.WithRev(m.Revision+1))
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			v.Compacted = true
		case err != nil:
			return v, fmt.Errorf("reading etcd at revision %d: %w", m.Revision+1, err)
		}
	}
	compared, differs, err := compareTail(rctx, cli, m)
	switch {
	case err != nil:
		return v, err
	case differs != "":
		v.Changed = differs
	case !compared && v.Compacted && !raftKnown:
		v.Undecided = true
	}
	return v, nil
}

// compareTail compares the keys the mark's revision wrote or deleted with what etcd holds
// at that revision. compared is false when etcd no longer has that revision (compacted) or
// the mark has no sample; differs says how etcd's revision differs, if it does.
func compareTail(ctx context.Context, cli *clientv3.Client, m *Mark) (compared bool, differs string, err error) {
	for _, tk := range m.Tail {
		r, err := cli.Get(ctx, string(tk.Key), clientv3.WithRev(m.Revision))
		if errors.Is(err, rpctypes.ErrCompacted) {
			return false, "", nil
		}
		if err != nil {
			return false, "", fmt.Errorf("reading key %q at revision %d: %w", tk.Key, m.Revision, err)
		}
		same := len(r.Kvs) == 0
		if !tk.Deleted {
			kv := r.Kvs
			same = len(kv) == 1 && kv[0].ModRevision == m.Revision && tailSum(kv[0].Value, kv[0].CreateRevision, kv[0].Version, kv[0].Lease) == tk.Sum
		} else if same && m.Revision > 1 {
			// deleted at the mark's revision, so it existed just before (if etcd still knows)
			before, err := cli.Get(ctx, string(tk.Key), clientv3.WithRev(m.Revision-1), clientv3.WithCountOnly())
			switch {
			case errors.Is(err, rpctypes.ErrCompacted): // cannot tell
			case err != nil:
				return false, "", fmt.Errorf("reading key %q at revision %d: %w", tk.Key, m.Revision-1, err)
			default:
				same = before.Count == 1
			}
		}
		if !same {
			return true, fmt.Sprintf("etcd's revision %d holds other changes than the %s recorded (key %q)", m.Revision, m, tk.Key), nil
		}
	}
	return len(m.Tail) > 0, "", nil
}

// committedIndex is the highest committed raft index among the client's endpoints, asked
// after a linearizable read. ok says it bounds everything committed before: every
// endpoint answered (the one that served the read among them), or the leader did (after
// the read it has committed an entry of its term, so its index is the highest there is).
// The endpoints are asked at once, each for at most two seconds: capture checks before
// every segment, and a partitioned member must not hold it up.
func committedIndex(ctx context.Context, cli *clientv3.Client) (idx uint64, ok bool) {
	eps := cli.Endpoints()
	var (
		mu       sync.Mutex
		answered int
		leader   bool
		wg       sync.WaitGroup
	)
	for _, ep := range eps {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			st, err := cli.Status(sctx, ep)
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			answered++
			idx = max(idx, st.RaftIndex)
			leader = leader || st.Leader != 0 && st.Leader == st.Header.MemberId
		})
	}
	wg.Wait()
	return idx, answered == len(eps) || leader
}

// resumePoints returns the newest snapshot of the cluster and the last segment of its
// history (nil if none), as marks. It lists only the segments after the newest snapshot
// of that history that has any after it, never the whole history.
func resumePoints(ctx context.Context, st store.Store, cluster string) (snap, seg *Mark, err error) {
	all, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return nil, nil, err
	}
	// One that failed verification or lost its object is no place to resume from.
	snaps := slices.DeleteFunc(all, func(m *snapshot.Manifest) bool { return !snapshot.Usable(m) })
	if len(snaps) == 0 {
		return nil, nil, nil
	}
	newest := snaps[0]
	snap = snapshotMark(newest)
	if newest.History == "" {
		return snap, nil, nil
	}
	anchors := []int64{}
	for _, s := range snaps {
		if s.History == newest.History {
			anchors = append(anchors, s.Revision)
		}
	}
	for _, after := range append(anchors, 0) {
		last, err := lastSegment(ctx, st, cluster, newest.History, after)
		if err != nil {
			return nil, nil, err
		}
		if last != nil {
			if last, err = last.full(ctx, st); err != nil {
				return nil, nil, err
			}
			return snap, last.mark(), nil
		}
	}
	return snap, nil, nil
}

// Latest is the newest stored point of the cluster's current history: its newest
// snapshot, or the last segment if that ends later. Nil if there is no snapshot.
func Latest(ctx context.Context, st store.Store, cluster string) (*Mark, error) {
	snap, seg, err := resumePoints(ctx, st, cluster)
	if seg != nil && seg.Revision >= snap.Revision {
		return seg, err
	}
	return snap, err
}

// Identify is a snapshot.SaveOptions.History for saves outside capture: a snapshot belongs
// to the history of the newest stored point if etcd continues it, else to a new one.
func Identify(cli *clientv3.Client, st store.Store, cluster string) func(context.Context, int64) snapshot.HistoryFunc {
	return func(ctx context.Context, startRev int64) snapshot.HistoryFunc {
		sample := sampleTail(ctx, cli, startRev)
		return func(ctx context.Context, rev int64) (string, []snapshot.TailKey, error) {
			tail := sample(ctx, rev)
			if rev <= 0 { // the save failed: only stop sampling
				return "", nil, nil
			}
			latest, err := Latest(ctx, st, cluster)
			if err != nil {
				return "", nil, err
			}
			if latest == nil || latest.History == "" {
				return NewHistory(time.Now()), tail, nil
			}
			// The snapshot is stored already (this runs before its manifest): an etcd blip
			// must not throw a big upload away, so the check is tried a few times.
			var v Verdict
			for attempt := 1; ; attempt++ {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				v, err = Check(cctx, cli, latest)
				cancel()
				if err == nil || attempt == 3 || ctx.Err() != nil {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(2 * time.Second):
				}
			}
			if err != nil {
				return "", nil, err
			}
			if v.Changed != "" || v.Undecided {
				return NewHistory(time.Now()), tail, nil
			}
			return latest.History, tail, nil
		}
	}
}

// InHistory is a snapshot.SaveOptions.History that files the snapshot under history.
func InHistory(cli *clientv3.Client, history string) func(context.Context, int64) snapshot.HistoryFunc {
	return func(ctx context.Context, startRev int64) snapshot.HistoryFunc {
		sample := sampleTail(ctx, cli, startRev)
		return func(ctx context.Context, rev int64) (string, []snapshot.TailKey, error) {
			return history, sample(ctx, rev), nil
		}
	}
}

// sampledRevisions bounds what sampleTail keeps: a snapshot's revision is the one etcd is
// at when its stream starts, a few revisions past the one read just before.
const sampledRevisions = 256

// sampleTail watches from startRev while a snapshot streams and keeps a sample of each of
// the next revisions, so the snapshot's own revision can be sampled however long its
// upload takes (etcd may compact it meanwhile). The function it returns stops the watch and
// samples rev from what it saw, else from etcd. The watch ends with ctx too.
func sampleTail(ctx context.Context, cli *clientv3.Client, startRev int64) func(context.Context, int64) []snapshot.TailKey {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	var mu sync.Mutex
	seen := map[int64][]snapshot.TailKey{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wch := cli.Watch(wctx, "", clientv3.WithPrefix(), clientv3.WithRev(startRev))
		defer drain(cancel, wch)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			mu.Lock()
			for _, r := range FromWatch(resp, time.Time{}) {
				if r.Rev < startRev+sampledRevisions {
					seen[r.Rev] = tailOf(r)
				}
			}
			full := len(seen) >= sampledRevisions
			mu.Unlock()
			if full {
				return
			}
		}
	}()
	return func(ctx context.Context, rev int64) []snapshot.TailKey {
		cancel()
		<-done
		if rev <= 0 { // only stopping the watch
			return nil
		}
		if t, ok := seen[rev]; ok {
			return t
		}
		return tailAt(ctx, cli, rev)
	}
}

// tailAt samples the keys written at rev, from etcd; nil if etcd no longer has them, or rev
// wrote none (the revision a --bump-revision restore starts at).
func tailAt(ctx context.Context, cli *clientv3.Client, rev int64) []snapshot.TailKey {
	wctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 5*time.Second)
	defer cancel()
	wch := cli.Watch(wctx, "", clientv3.WithPrefix(), clientv3.WithRev(rev))
	defer drain(cancel, wch)
	// A progress notification comes only once the watch has caught up (etcd ignores the
	// request until then, so it is repeated): if it comes first, nothing was written at
	// rev or after.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			_ = cli.RequestProgress(wctx)
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil || resp.IsProgressNotify() {
				return nil
			}
			if revs := FromWatch(resp, time.Time{}); len(revs) > 0 {
				if revs[0].Rev != rev {
					return nil
				}
				return tailOf(revs[0])
			}
		}
	}
}

// drain cancels a watch and reads it until the client closes its channel. A watch left
// with responses unread while its client closes deadlocks etcd's client (Client.Close waits
// for the watch stream, whose substream waits to hand its close to the stream's loop, which
// has stopped): a failed snapshot save hung forever there.
func drain(cancel context.CancelFunc, wch clientv3.WatchChan) {
	cancel()
	for range wch {
	}
}
