// Package snapshot streams etcd snapshots into a store (save), and lists, finds and
// verifies them. A snapshot is an object <cluster>/snapshots/<ID>.db[.zst|.gz] and its
// manifest <cluster>/snapshots/<ID>.json; the manifest is written last, so a snapshot
// exists only once it is complete.
package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/etcdguard/etcdguard/store"
)

// Manifest describes one complete snapshot. Its JSON form is etcdguard's output contract.
type Manifest struct {
	ID              string    `json:"id"`
	Cluster         string    `json:"cluster"`
	CreatedAt       time.Time `json:"created_at"`
	CompletedAt     time.Time `json:"completed_at"`
	Revision        int64     `json:"revision"`
	CompactRevision int64     `json:"compact_revision"`
	// KeyCount is the number of keys at Revision, counted by etcd right after the
	// snapshot; absent if that revision was compacted away before it could be counted.
	KeyCount    *int64 `json:"key_count,omitempty"`
	EtcdVersion string `json:"etcd_version"`
	ClusterID   string `json:"cluster_id"`
	MemberID    string `json:"member_id"`
	Endpoint    string `json:"endpoint"`
	DBSize      int64  `json:"db_size"`
	StoredSize  int64  `json:"stored_size"`
	SHA256      string `json:"sha256"`
	Compression string `json:"compression"`
	Encryption  string `json:"encryption"` // none or age
	// Recipients are the age public keys the object is encrypted to: who can restore it.
	Recipients  []string `json:"recipients,omitempty"`
	Object      string   `json:"object"`
	ToolVersion string   `json:"tool_version"`
	// History names the etcd history the snapshot belongs to: a restore starts a new one
	// under the same cluster name, and deltas chain onto a snapshot only within its history.
	History string `json:"history,omitempty"`
	// RaftIndex is etcd's committed raft index just before the stream, and Tail a sample of
	// the keys written at Revision: what tells later whether etcd still continues this
	// history (a restore that reuses the cluster token keeps the cluster ID).
	RaftIndex uint64    `json:"raft_index,omitempty"`
	Tail      []TailKey `json:"tail,omitempty"`

	// Verification is filled by List and Find from the sibling records, never stored:
	// verified, unverified, failed (a verification found it corrupt; Problems say how) or
	// missing (its object is gone). See Usable.
	Verification string   `json:"verification,omitempty"`
	Problems     []string `json:"problems,omitempty"`
}

// TailKey is one key written at a stored revision, with a digest of what it held then, or
// deleted at it.
type TailKey struct {
	Key     []byte `json:"key"`
	Sum     string `json:"sum,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
}

// The states of Manifest.Verification.
const (
	Verified   = "verified"
	Unverified = "unverified"
	Failed     = "failed"
	Missing    = "missing"
)

// Usable says whether a snapshot may be restored, counted as a fresh backup or kept by a
// retention rule: it is, unless a verification failed or its object is gone. Every
// caller that picks snapshots goes through this, so none can disagree.
func Usable(m *Manifest) bool { return m.Verification != Failed && m.Verification != Missing }

// Newest returns the newest usable snapshot of all (newest first, as List returns them),
// or nil.
func Newest(all []*Manifest) *Manifest {
	for _, m := range all {
		if Usable(m) {
			return m
		}
	}
	return nil
}

const manifestExt = ".json"

// Verification records sit next to the manifest (<ID>.verified.json, <ID>.failed.json);
// they share its .json extension but are not manifests.
const (
	verifiedSuffix = ".verified.json"
	failedSuffix   = ".failed.json"
)

func isRecord(key string) bool {
	return strings.HasSuffix(key, verifiedSuffix) || strings.HasSuffix(key, failedSuffix)
}

func snapshotsPrefix(cluster string) string { return cluster + "/snapshots/" }

func manifestKey(cluster, id string) string { return snapshotsPrefix(cluster) + id + manifestExt }

// newID returns <YYYYMMDDTHHMMSSZ>-<6 hex>: sorts by start time and never collides.
func newID(t time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

func writeManifest(ctx context.Context, st store.Store, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	key := manifestKey(m.Cluster, m.ID)
	if err := store.PutBytes(ctx, st, key, b); err != nil {
		return fmt.Errorf("writing manifest %s: %w", key, err)
	}
	return nil
}

// errBadManifest marks a manifest whose content is not one: what List skips.
var errBadManifest = errors.New("not a valid manifest")

func readManifest(ctx context.Context, st store.Store, key string) (*Manifest, error) {
	b, err := store.ReadAll(ctx, st, key, 1<<20)
	if err != nil {
		return nil, err
	}
	return parseManifest(key, b)
}

// parseManifest decodes a manifest read from key.
func parseManifest(key string, b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %w", key, errBadManifest, err)
	}
	if m.ID == "" || m.Object == "" {
		return nil, fmt.Errorf("manifest %s: %w: it has no id or object", key, errBadManifest)
	}
	return &m, nil
}

// List returns the cluster's complete snapshots, newest first, each with its Verification.
// A manifest whose content is bad, or that went between the listing and its read, is
// logged and skipped, so one bad object never hides the others during an outage. One the
// store fails to return fails the listing: skipped, the newest snapshot would vanish from
// `restore --snapshot latest` and from the freshness check (paging EtcdSnapshotLost for a
// store that merely hiccuped).
func List(ctx context.Context, st store.Store, cluster string) ([]*Manifest, error) {
	objs, err := st.List(ctx, snapshotsPrefix(cluster))
	if err != nil {
		return nil, fmt.Errorf("listing snapshots of cluster %s in %s: %w", cluster, st, err)
	}
	keys := make(map[string]bool, len(objs))
	for _, o := range objs {
		keys[o.Key] = true
	}
	var out []*Manifest
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, manifestExt) || isRecord(o.Key) {
			continue
		}
		m, err := readManifest(ctx, st, o.Key)
		if err == nil {
			err = annotate(ctx, st, m, keys)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if !errors.Is(err, errBadManifest) && !errors.Is(err, store.ErrNotExist) {
				return nil, fmt.Errorf("listing snapshots of cluster %s in %s: reading %s: %w", cluster, st, o.Key, err)
			}
			slog.WarnContext(ctx, "skipping unreadable manifest", "key", o.Key, "err", err)
			continue
		}
		out = append(out, m)
	}
	// Newest first by start time: ids have one-second resolution, so two snapshots in
	// the same second would otherwise be ordered by their random suffix.
	slices.SortFunc(out, func(a, b *Manifest) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out, nil
}

// ErrNoSnapshots is returned when a cluster has no complete snapshot.
var ErrNoSnapshots = errors.New("no snapshots")

// Find returns the snapshot named by id, or the newest one for "latest". An unknown id
// gets an error naming the snapshots closest to it in time.
func Find(ctx context.Context, st store.Store, cluster, id string) (*Manifest, error) {
	if id != "latest" {
		m, err := readManifest(ctx, st, manifestKey(cluster, id))
		if err == nil {
			err = annotate(ctx, st, m, nil)
		}
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, store.ErrNotExist) {
			return nil, err
		}
	}
	all, err := List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("cluster %s has %w in %s: take one with `etcdguard snapshot save`", cluster, ErrNoSnapshots, st)
	}
	if id == "latest" {
		if m := Newest(all); m != nil {
			return m, nil
		}
		return nil, fmt.Errorf("cluster %s has %w usable in %s: all %d failed verification or lost their object (`etcdguard snapshot list`); take one with `etcdguard snapshot save`",
			cluster, ErrNoSnapshots, st, len(all))
	}
	return nil, fmt.Errorf("snapshot %s not found in cluster %s; nearest: %s (see `etcdguard snapshot list`): %w",
		id, cluster, strings.Join(nearest(all, id, 3), ", "), store.ErrNotExist)
}

// annotate fills m.Verification from the keys under the snapshots prefix (nil: look up
// this snapshot's own keys). A failed verification outranks a success recorded earlier.
func annotate(ctx context.Context, st store.Store, m *Manifest, keys map[string]bool) error {
	prefix := snapshotsPrefix(m.Cluster)
	if keys == nil {
		objs, err := st.List(ctx, prefix+m.ID)
		if err != nil {
			return fmt.Errorf("listing the records of snapshot %s: %w", m.ID, err)
		}
		keys = map[string]bool{}
		for _, o := range objs {
			keys[o.Key] = true
		}
	}
	present := keys[m.Object]
	if !strings.HasPrefix(m.Object, prefix) {
		// Not covered by the listing.
		_, err := st.Stat(ctx, m.Object)
		if err != nil && !errors.Is(err, store.ErrNotExist) {
			return fmt.Errorf("looking for the object of snapshot %s: %w", m.ID, err)
		}
		present = err == nil
	}
	switch {
	case !present:
		m.Verification, m.Problems = Missing, []string{"object " + m.Object + " is missing"}
	case keys[recordKey(m.Cluster, m.ID, failedSuffix)]:
		m.Verification = Failed
		var rec verification
		b, err := store.ReadAll(ctx, st, recordKey(m.Cluster, m.ID, failedSuffix), 1<<20)
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil && !errors.Is(err, store.ErrNotExist) {
			slog.WarnContext(ctx, "cannot read why a snapshot failed verification", "id", m.ID, "err", err)
		}
		m.Problems = rec.Problems
	case keys[recordKey(m.Cluster, m.ID, verifiedSuffix)]:
		m.Verification = Verified
	default:
		m.Verification = Unverified
	}
	return nil
}

// nearest returns up to n ids closest to id in sort order (ids sort by time).
func nearest(all []*Manifest, id string, n int) []string {
	ids := make([]string, len(all))
	for i, m := range all {
		ids[i] = m.ID
	}
	slices.Sort(ids)
	i, _ := slices.BinarySearch(ids, id)
	lo, hi := max(0, i-n/2-1), min(len(ids), i+n/2+1)
	for hi-lo > n {
		if i-lo > hi-i {
			lo++
		} else {
			hi--
		}
	}
	return ids[lo:hi]
}

// Clusters returns the clusters that have snapshots in the store.
func Clusters(ctx context.Context, st store.Store) ([]string, error) {
	objs, err := st.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("listing clusters in %s: %w", st, err)
	}
	var out []string
	for _, o := range objs {
		if cluster, rest, ok := strings.Cut(o.Key, "/"); ok && strings.HasPrefix(rest, "snapshots/") {
			out = append(out, cluster) // keys are sorted, so one cluster's keys are adjacent
		}
	}
	return slices.Compact(out), nil
}

// ResolveCluster picks the cluster for commands that do not talk to etcd: the one given,
// or the only one in the store.
func ResolveCluster(ctx context.Context, st store.Store, cluster string) (string, error) {
	if cluster != "" {
		return cluster, nil
	}
	all, err := Clusters(ctx, st)
	if err != nil {
		return "", err
	}
	switch len(all) {
	case 0:
		return "", fmt.Errorf("no snapshots of any cluster in %s: check --store, or take one with `etcdguard snapshot save`", st)
	case 1:
		return all[0], nil
	}
	return "", fmt.Errorf("%s holds several clusters (%s): choose one with --cluster", st, strings.Join(all, ", "))
}

// objectKey is where a snapshot's data lives.
func objectKey(cluster, id, compression string) string {
	return path.Join(snapshotsPrefix(cluster), id+extension(compression))
}

// firstKey records the cluster's first stored snapshot, outside snapshots/ so that no
// retention or cleanup of snapshots touches it: that the cluster was ever backed up is
// what tells snapshots lost (page at once) from a new install's first one to come.
func firstKey(cluster string) string { return cluster + "/first-snapshot.json" }

// markFirst records m as the cluster's first snapshot unless one is recorded. A failure
// only costs the distinction above, so it is logged, never the save's failure.
func markFirst(ctx context.Context, st store.Store, m *Manifest, log *slog.Logger) {
	if _, err := st.Stat(ctx, firstKey(m.Cluster)); !errors.Is(err, store.ErrNotExist) {
		return
	}
	b, _ := json.Marshal(map[string]any{"id": m.ID, "created_at": m.CreatedAt})
	if err := store.PutBytes(ctx, st, firstKey(m.Cluster), b); err != nil {
		log.WarnContext(ctx, "could not record the cluster's first snapshot", "key", firstKey(m.Cluster), "err", err)
	}
}

// EverStored says whether the cluster has had a snapshot stored (by an etcdguard that
// records it: this one and later).
func EverStored(ctx context.Context, st store.Store, cluster string) (bool, error) {
	_, err := st.Stat(ctx, firstKey(cluster))
	if errors.Is(err, store.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}
