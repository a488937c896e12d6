// Package delta captures etcd's changes between full snapshots as ordered segments in the
// store, for point-in-time restore: every revision's events, with the wall-clock time they
// were captured (watch events carry none). A segment is <cluster>/deltas/<from>-<to>.seg.zst
// (20-digit revisions, so listings sort by revision; the format is in codec.go) and its manifest
// <from>-<to>.t<first>-<last>.json (capture times in Unix nanoseconds), written last: a
// segment exists only when its manifest does. The name carries what a timeline needs, so
// listing a week of segments is a few LIST calls, not a GET per segment.
package delta

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Event is one key change at a revision.
type Event struct {
	Delete    bool   `json:"delete,omitempty"`
	Key       []byte `json:"k"`
	Value     []byte `json:"v,omitempty"`
	CreateRev int64  `json:"create_rev,omitempty"`
	Version   int64  `json:"version,omitempty"`
	Lease     int64  `json:"lease,omitempty"`
	// LeaseTTL is the lease's granted TTL in seconds, as the capture learned it; 0 if the
	// lease was already gone (its keys are deleted in a later revision).
	LeaseTTL int64 `json:"lease_ttl,omitempty"`
}

// Revision is every event of one etcd revision (a transaction may change many keys) and
// when the capture saw it.
type Revision struct {
	Rev    int64     `json:"rev"`
	Time   time.Time `json:"time"`
	Events []Event   `json:"events"`
}

// Manifest describes a stored segment.
type Manifest struct {
	Cluster   string    `json:"cluster"`
	History   string    `json:"history,omitempty"` // "" for segments written before histories
	ClusterID string    `json:"cluster_id,omitempty"`
	FromRev   int64     `json:"from_rev"`
	ToRev     int64     `json:"to_rev"`
	FirstTime time.Time `json:"first_time"`
	LastTime  time.Time `json:"last_time"`
	Revisions int       `json:"revisions"`
	Events    int       `json:"events"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"` // of the compressed segment (before encryption)
	Object    string    `json:"object"`
	// Recipients are the age public keys an encrypted segment (Object ends in .age) is
	// encrypted to.
	Recipients []string `json:"recipients,omitempty"`
	// RaftIndex (etcd's committed index when the segment was stored) and Tail (keys the
	// last revision wrote) let capture tell, when it resumes, whether etcd still continues
	// this history.
	RaftIndex uint64             `json:"raft_index,omitempty"`
	Tail      []snapshot.TailKey `json:"tail,omitempty"`

	key string // the manifest's key; with List's summaries, the rest is read on demand
}

// Identity is what a capture knows of the history it writes.
type Identity struct {
	History   string
	ClusterID string
	RaftIndex uint64 // committed raft index at or before the segment's first revision
}

func prefix(cluster string) string { return cluster + "/deltas/" }

// historyPrefix is where a history's segments live. Within it, names start with the last
// revision (<to>-<from>), so a listing can start right after any revision: a restore
// lists from its base snapshot, a resume from the newest one, never the whole history.
func historyPrefix(cluster, history string) string { return prefix(cluster) + history + "/" }

func baseName(from, to int64) string { return fmt.Sprintf("%020d-%020d", from, to) }

func (m *Manifest) base() string {
	if m.History == "" {
		return prefix(m.Cluster) + baseName(m.FromRev, m.ToRev)
	}
	return historyPrefix(m.Cluster, m.History) + baseName(m.ToRev, m.FromRev)
}

func manifestKey(m *Manifest) string {
	return fmt.Sprintf("%s.t%d-%d.json", m.base(), m.FirstTime.UnixNano(), m.LastTime.UnixNano())
}

// summary reads a segment's manifest key; ok is false for keys named otherwise (or
// written before the times were in the name), whose manifest must be read.
func summary(cluster, history, key string) (m *Manifest, ok bool) {
	dir := prefix(cluster)
	if history != "" {
		dir = historyPrefix(cluster, history)
	}
	rest, under := strings.CutPrefix(key, dir)
	name, found := strings.CutSuffix(rest, ".json")
	revs, times, found2 := strings.Cut(name, ".t")
	if !under || !found || !found2 || strings.Contains(revs, "/") {
		return nil, false
	}
	var a, b, first, last int64
	if n, err := fmt.Sscanf(revs+" "+times, "%d-%d %d-%d", &a, &b, &first, &last); n != 4 || err != nil || revs != baseName(a, b) {
		return nil, false
	}
	m = &Manifest{Cluster: cluster, History: history, FromRev: a, ToRev: b, FirstTime: time.Unix(0, first).UTC(), LastTime: time.Unix(0, last).UTC(), key: key}
	if history != "" {
		m.FromRev, m.ToRev = b, a
	}
	if m.FromRev > m.ToRev || m.FromRev < 1 { // no segment is named so: read its manifest
		return nil, false
	}
	m.Object = m.base() + ".seg.zst"
	if manifestKey(m) != key { // not as etcdguard names one (times written otherwise, text after them)
		return nil, false
	}
	return m, true
}

// load reads a manifest object whole.
func load(ctx context.Context, st store.Store, key string) (*Manifest, error) {
	b, err := store.ReadAll(ctx, st, key, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("delta manifest %s: %w", key, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %v", ErrCorrupt, key, err)
	}
	m.key = key
	return &m, nil
}

// full returns the whole manifest m summarizes, checked against its name.
func (m *Manifest) full(ctx context.Context, st store.Store) (*Manifest, error) {
	if m.SHA256 != "" {
		return m, nil
	}
	full, err := load(ctx, st, m.key)
	if err != nil {
		return nil, err
	}
	// A summary cannot tell an encrypted segment from its name's revisions: the manifest can.
	if full.FromRev != m.FromRev || full.ToRev != m.ToRev || strings.TrimSuffix(full.Object, store.EncryptedExt) != m.Object || full.History != m.History {
		return nil, fmt.Errorf("%w: manifest %s describes revisions %d-%d of history %q in %s", ErrCorrupt, m.key, full.FromRev, full.ToRev, full.History, full.Object)
	}
	return full, nil
}

// CanRead says, before a restore writes anything, whether st can read the segments: the
// first and last of them are checked (a listing's summaries do not say whether a segment is
// encrypted, and reading every manifest of a month of segments would cost a read each);
// recipients rotated in between still fail the replay, which then removes what it wrote.
func CanRead(ctx context.Context, st store.Store, segs []*Manifest) error {
	if len(segs) == 0 {
		return nil
	}
	for _, m := range []*Manifest{segs[0], segs[len(segs)-1]} {
		full, err := m.full(ctx, st)
		if err != nil {
			return err
		}
		if strings.HasSuffix(full.Object, store.EncryptedExt) {
			if err := crypt.CanRead(st, "delta segment "+full.Object, full.Recipients); err != nil {
				return err
			}
		}
	}
	return nil
}

// mark is where the segment ends, as a point of its history.
func (m *Manifest) mark() *Mark {
	return &Mark{History: m.History, ClusterID: m.ClusterID, Revision: m.ToRev, Time: m.LastTime, RaftIndex: m.RaftIndex, Tail: m.Tail}
}

// WriteSegment stores revs (ascending, consecutive) as one segment of id's history: data
// first, manifest last.
func WriteSegment(ctx context.Context, st store.Store, cluster string, id Identity, revs []Revision) (*Manifest, error) {
	if len(revs) == 0 {
		return nil, errors.New("empty segment")
	}
	if id.History == "" {
		return nil, errors.New("a delta segment needs the history it belongs to")
	}
	for i := 1; i < len(revs); i++ {
		if revs[i].Rev != revs[i-1].Rev+1 {
			return nil, fmt.Errorf("revisions %d and %d are not consecutive: a gap would make the segment unusable", revs[i-1].Rev, revs[i].Rev)
		}
	}
	last := revs[len(revs)-1]
	m := &Manifest{Cluster: cluster, History: id.History, ClusterID: id.ClusterID, RaftIndex: id.RaftIndex,
		FromRev: revs[0].Rev, ToRev: last.Rev, FirstTime: revs[0].Time, LastTime: last.Time, Revisions: len(revs), Tail: tailOf(last)}
	m.Object = m.base() + ".seg.zst"
	if to := store.EncryptTo(st); len(to) > 0 {
		m.Object, m.Recipients = m.Object+store.EncryptedExt, to
	}
	for _, r := range revs {
		m.Events += len(r.Events)
	}
	pr, pw := io.Pipe()
	h := sha256.New()
	go func() {
		zw, err := zstd.NewWriter(io.MultiWriter(pw, h), zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		enc, err := newEncoder(zw)
		for _, r := range revs {
			if err != nil {
				break
			}
			err = enc.encode(r)
		}
		if err == nil {
			err = enc.flush()
		}
		pw.CloseWithError(errors.Join(err, zw.Close()))
	}()
	n, err := st.Put(ctx, m.Object, pr)
	pr.CloseWithError(err)
	if err != nil {
		return nil, fmt.Errorf("storing delta segment %s: %w", m.Object, err)
	}
	m.Size, m.SHA256, m.key = n, hex.EncodeToString(h.Sum(nil)), manifestKey(m)
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := store.PutBytes(ctx, st, m.key, b); err != nil {
		return nil, fmt.Errorf("storing the manifest of delta segment %s: %w", m.Object, err)
	}
	return m, nil
}

// Segments returns the segments of history that end after revision after, in revision
// order, up to and including the first for which last returns true (nil: to the end). It
// lists only those: a listing starts right after the revision. The segments written
// before histories ("" history) are listed whole.
func Segments(ctx context.Context, st store.Store, cluster, history string, after int64, last func(*Manifest) bool) ([]*Manifest, error) {
	var out []*Manifest
	err := walkSegments(ctx, st, cluster, history, after, func(m *Manifest) bool {
		out = append(out, m)
		return last == nil || !last(m)
	})
	return out, err
}

// walkSegments calls fn with the segments of history that end after revision after, in
// revision order, until fn returns false; only one page of them is in memory at a time.
func walkSegments(ctx context.Context, st store.Store, cluster, history string, after int64, fn func(*Manifest) bool) error {
	keep := func(m *Manifest) bool {
		return m.ToRev <= after || fn(m)
	}
	if history == "" {
		segs, err := legacySegments(ctx, st, cluster)
		if err != nil {
			return err
		}
		for _, m := range segs {
			if !keep(m) {
				break
			}
		}
		return nil
	}
	dir := historyPrefix(cluster, history)
	// A segment's data (<base>.seg.zst[.age]) lists right before its manifest
	// (<base>.t...json): the listing gives the summary its stored size, which a restore
	// counts when it checks for free space, without reading the manifest.
	data := map[string]int64{} // the data objects listed since the last manifest
	err := store.Walk(ctx, st, dir, dir+fmt.Sprintf("%020d~", max(after, 0)), func(o store.ObjectInfo) bool {
		if !strings.HasSuffix(o.Key, ".json") {
			data[o.Key] = o.Size
			return true
		}
		m, ok := summary(cluster, history, o.Key)
		if !ok {
			return true // observed.json, or a name of someone else's
		}
		m.Size = max(data[m.Object], data[m.Object+store.EncryptedExt])
		clear(data)
		return keep(m)
	})
	if err != nil {
		return fmt.Errorf("listing delta segments of history %s: %w", history, err)
	}
	return nil
}

// legacySegments lists the segments written before histories, whole.
func legacySegments(ctx context.Context, st store.Store, cluster string) ([]*Manifest, error) {
	objs, err := st.List(ctx, prefix(cluster)+"0")
	if err != nil {
		return nil, fmt.Errorf("listing delta segments: %w", err)
	}
	sizes := map[string]int64{}
	for _, o := range objs {
		sizes[o.Key] = o.Size
	}
	var out []*Manifest
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, ".json") {
			continue
		}
		m, ok := summary(cluster, "", o.Key)
		if !ok {
			if m, err = load(ctx, st, o.Key); err != nil {
				return nil, err
			}
		}
		if m.Size == 0 {
			m.Size = max(sizes[m.Object], sizes[m.Object+store.EncryptedExt])
		}
		out = append(out, m)
	}
	return out, nil
}

// lastSegment returns the last segment of history if it ends after revision after, else nil.
func lastSegment(ctx context.Context, st store.Store, cluster, history string, after int64) (*Manifest, error) {
	segs, err := Segments(ctx, st, cluster, history, after, nil)
	if err != nil || len(segs) == 0 {
		return nil, err
	}
	return segs[len(segs)-1], nil
}

// Observed is how far capture has seen a history with nothing left to store: at Time,
// etcd was at Revision and every revision up to it was stored. An idle cluster writes no
// segments; this is what keeps its recent points reachable.
type Observed struct {
	History  string    `json:"history"`
	Revision int64     `json:"revision"`
	Time     time.Time `json:"time"`
}

func observedKey(cluster, history string) string {
	return historyPrefix(cluster, history) + "observed.json"
}

// WriteObserved records o for its history.
func WriteObserved(ctx context.Context, st store.Store, cluster string, o Observed) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if err := store.PutBytes(ctx, st, observedKey(cluster, o.History), b); err != nil {
		return fmt.Errorf("recording how far delta capture observed history %s: %w", o.History, err)
	}
	return nil
}

// ReadObserved returns what capture last recorded for history; nil if nothing.
func ReadObserved(ctx context.Context, st store.Store, cluster, history string) (*Observed, error) {
	if history == "" {
		return nil, nil
	}
	b, err := store.ReadAll(ctx, st, observedKey(cluster, history), 1<<16)
	if errors.Is(err, store.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading how far delta capture observed history %s: %w", history, err)
	}
	var o Observed
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, observedKey(cluster, history), err)
	}
	return &o, nil
}

// Gap is a missing stretch of revisions between two stored segments.
type Gap struct{ From, To int64 }

// Gaps returns where the segments do not chain (each must start right after the previous).
func Gaps(segs []*Manifest) []Gap {
	var out []Gap
	for i := 1; i < len(segs); i++ {
		if want := segs[i-1].ToRev + 1; segs[i].FromRev != want {
			out = append(out, Gap{From: want, To: segs[i].FromRev - 1})
		}
	}
	return out
}

// ErrCorrupt is wrapped when a segment's data does not match its manifest.
var ErrCorrupt = errors.New("delta segment corrupt")

// ReadSegment verifies a segment's sha256 while reading it and calls fn for each revision.
// fn sees revisions before the checksum is known to match, so a caller that applies them
// must be ready to discard its work when ReadSegment fails.
func ReadSegment(ctx context.Context, st store.Store, m *Manifest, fn func(Revision) error) error {
	m, err := m.full(ctx, st)
	if err != nil {
		return err
	}
	rc, err := st.Get(ctx, m.Object)
	if err != nil {
		return fmt.Errorf("delta segment %s: %w", m.Object, err)
	}
	defer rc.Close()
	// A read the store failed (a connection cut, a stall) is the store's error, to retry,
	// not the segment's: the decoder would report it as bad data.
	src := &readErr{r: rc}
	h := sha256.New()
	zr := zdecoders.Get().(*zstd.Decoder)
	if err := zr.Reset(io.TeeReader(src, h)); err != nil {
		return err
	}
	defer func() { zr.Reset(nil); zdecoders.Put(zr) }()
	dec := newDecoder(zr)
	next := m.FromRev
	for {
		r, err := dec()
		if errors.Is(err, io.EOF) {
			break
		}
		if src.err != nil && !undecryptable(src.err) {
			return fmt.Errorf("delta segment %s: %w", m.Object, src.err)
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, m.Object, err)
		}
		if r.Rev != next {
			return fmt.Errorf("%w: %s: revision %d where %d was expected", ErrCorrupt, m.Object, r.Rev, next)
		}
		next++
		if err := fn(r); err != nil {
			return err
		}
	}
	if _, err := io.Copy(h, src); err != nil || src.err != nil { // what the decoder did not read
		err = cmp.Or(src.err, err)
		if undecryptable(err) {
			return fmt.Errorf("%w: %s: %w", ErrCorrupt, m.Object, err)
		}
		return fmt.Errorf("delta segment %s: %w", m.Object, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SHA256 || next != m.ToRev+1 {
		return fmt.Errorf("%w: %s: sha256 %s (manifest %s), revisions up to %d (manifest %d)", ErrCorrupt, m.Object, got, m.SHA256, next-1, m.ToRev)
	}
	return nil
}

// undecryptable says a read failed on what the store holds (ciphertext that does not
// authenticate, or no identity for it), not on the store delivering it.
func undecryptable(err error) bool {
	return errors.Is(err, crypt.ErrCorrupt) || errors.Is(err, crypt.ErrNoIdentity)
}

// readErr remembers the first error of r other than EOF.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// FromWatch turns one watch response's events into revisions, grouped by revision in order.
func FromWatch(resp clientv3.WatchResponse, now time.Time) []Revision {
	var out []Revision
	for _, ev := range resp.Events {
		rev := ev.Kv.ModRevision
		if len(out) == 0 || out[len(out)-1].Rev != rev {
			out = append(out, Revision{Rev: rev, Time: now})
		}
		e := Event{Key: ev.Kv.Key}
		if ev.Type == mvccpb.DELETE {
			e.Delete = true
		} else {
			e.Value, e.CreateRev, e.Version, e.Lease = ev.Kv.Value, ev.Kv.CreateRevision, ev.Kv.Version, ev.Kv.Lease
		}
		out[len(out)-1].Events = append(out[len(out)-1].Events, e)
	}
	return out
}

// Prune deletes the segments no kept snapshot can reach: in each history, those ending
// at or below the oldest snapshot of it that retention keeps (decisions, from
// snapshot.Prune; snapshots not in it are kept), and every segment of a history none of
// whose snapshots is kept. It returns the segments deleted, or that would be with dryRun.
// Each manifest goes before its data, so a segment never appears without its data.
func Prune(ctx context.Context, st store.Store, cluster string, decisions []snapshot.Decision, dryRun bool) ([]*Manifest, error) {
	snaps, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	dropped := map[string]bool{}
	histories := map[string]bool{}
	for _, d := range decisions {
		dropped[d.ID] = !d.Keep
		histories[d.History] = true
	}
	floors := map[string]int64{} // history → the oldest kept snapshot's revision
	for _, s := range snaps {
		histories[s.History] = true
		if f, ok := floors[s.History]; !dropped[s.ID] && (!ok || s.Revision < f) {
			floors[s.History] = s.Revision
		}
		delete(dropped, s.ID)
	}
	for id, drop := range dropped {
		if !drop {
			// A kept snapshot did not list (a manifest unreadable for a moment): its
			// history and revision are unknown, so nothing is safe to delete this time.
			slog.WarnContext(ctx, "not pruning delta segments: a kept snapshot is missing from the listing", "cluster", cluster, "snapshot", id)
			return nil, nil
		}
	}
	var out []*Manifest
	locked := 0
	for h := range histories {
		floor, ok := floors[h]
		if !ok {
			floor = math.MaxInt64 // no snapshot of this history is kept: none of its segments is reachable
		}
		lockedBefore := locked // the history's record stays while any of its segments does
		segs, err := Segments(ctx, st, cluster, h, 0, func(m *Manifest) bool { return m.ToRev >= floor })
		if err != nil {
			return out, err
		}
		for _, m := range segs {
			if m.ToRev > floor {
				break
			}
			out = append(out, m)
			if dryRun {
				continue
			}
			keys := []string{m.key}
			if strings.HasPrefix(m.Object, prefix(cluster)) { // a manifest only names its own cluster's objects
				// A summary's name does not say whether the segment is encrypted: delete
				// both names (deleting a missing key is no error), never orphan the data.
				keys = append(keys, m.Object)
				if !strings.HasSuffix(m.Object, store.EncryptedExt) {
					keys = append(keys, m.Object+store.EncryptedExt)
				}
			}
			// A segment under a retention lock stays whole (its manifest too) until a later
			// prune: unreachable segments cost space, never correctness.
			until, err := store.LockedUntil(ctx, st, time.Now(), keys...)
			if err != nil {
				return out, fmt.Errorf("pruning delta segment %s (checking its retention lock): %w; run prune again to finish", m.Object, err)
			}
			if !until.IsZero() {
				out = out[:len(out)-1]
				locked++
				continue
			}
			for _, key := range keys {
				err := st.Delete(ctx, key)
				if errors.Is(err, store.ErrLocked) {
					break
				}
				if err != nil {
					return out, fmt.Errorf("pruning delta segment %s (deleting %s): %w; run prune again to finish", m.Object, key, err)
				}
			}
		}
		if !ok && h != "" && !dryRun && locked == lockedBefore {
			if err := st.Delete(ctx, observedKey(cluster, h)); err != nil && !errors.Is(err, store.ErrLocked) {
				return out, fmt.Errorf("pruning history %s: %w", h, err)
			}
		}
	}
	if len(out) > 0 && !dryRun {
		slog.InfoContext(ctx, "delta segments pruned: no kept snapshot reaches them", "cluster", cluster, "segments", len(out))
	}
	if locked > 0 {
		slog.InfoContext(ctx, "delta segments kept: locked (S3 Object Lock); a later prune deletes them", "cluster", cluster, "segments", locked)
	}
	return out, nil
}
