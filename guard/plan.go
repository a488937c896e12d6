package guard

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcdguard/etcdguard/store"
)

// Plan is what a dry run found and what a confirm will delete. Its JSON form is the
// `del --dry-run -o json` output contract.
type Plan struct {
	ID         string           `json:"plan_id"`
	Cluster    string           `json:"cluster"`
	Range      Range            `json:"range"`
	Revision   int64            `json:"revision"`
	KeyCount   int64            `json:"key_count"`
	ValueBytes int64            `json:"value_bytes"`
	ByType     map[string]int64 `json:"by_type"`
	FirstKey   string           `json:"first_key"`
	LastKey    string           `json:"last_key"`
	Sample     []string         `json:"sample"`
	Warnings   []string         `json:"warnings"`
	CreatedAt  time.Time        `json:"created_at"`
	ExpiresAt  time.Time        `json:"expires_at"`
	User       string           `json:"user"`
	Host       string           `json:"host"`
	// Digest is sha256 of the plan as MakePlan wrote it (this field empty): a stored plan
	// damaged into another that still agrees with itself, a shifted range holding the
	// same keys for one, is refused instead of confirmed for what the operator never read.
	Digest string `json:"digest"`
}

// PlanOptions configures MakePlan.
type PlanOptions struct {
	Cluster  string
	MaxKeys  int64         // more keys than this is a warning (--max-keys)
	TTL      time.Duration // how long the plan can be confirmed (--plan-ttl)
	PageSize int64         // keys per read; memory stays flat however many keys match
	EtcdUser string        // for the audit record
}

const sampleSize = 10

func plansPrefix(cluster string) string     { return cluster + "/guard/plans/" }
func planKey(cluster, id string) string     { return plansPrefix(cluster) + id + ".json" }
func planKeysKey(cluster, id string) string { return plansPrefix(cluster) + id + ".keys.jsonl.zst" }

// markerKey is the etcd key a confirm's delete writes in its own transaction, holding
// the confirm's attempt id: etcd's record of which confirm of the plan deleted its range,
// if one did. An owner's delete of the same keys leaves it alone, and changing it (a
// "cancelled" value) makes every confirm still on its way fail, as each compares it.
func markerKey(cluster, id string) string { return RecordPrefix(cluster) + id }

// RecordPrefix is where in etcd confirms record their deletes (markerKey): a confirm, and
// an undo that settles an interrupted one, needs readwrite permission on it.
func RecordPrefix(cluster string) string { return "/etcdguard/" + cluster + "/guard/" }

// The marker's values besides an attempt id (which starts with "a-"): pending, written by
// a confirm before it saves anything (so a saved copy without a marker means someone
// deleted the marker), and cancelled, once a plan's interrupted confirms were settled as
// having deleted nothing.
const (
	markerPending   = "pending"
	markerCancelled = "cancelled"
)

const attemptPrefix = "a-"

func newAttempt() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return attemptPrefix + hex.EncodeToString(b[:])
}

// isAttempt says whether v is an attempt id, as newAttempt makes them.
func isAttempt(v string) bool { return strings.HasPrefix(v, attemptPrefix) }

// deletedPrefix is where a plan's saved copies are, one per confirm attempt:
// <id>.<attempt>.jsonl.zst (.age when the store encrypts); an etcdguard before attempts
// named its copy <id>.jsonl.zst.
func deletedPrefix(cluster, id string) string { return cluster + "/guard/deleted/" + id + "." }

// droppedKey lists, in the clear, the keys of an encrypted saved copy that others deleted
// before the plan's delete (see reconcile): undo leaves them deleted. Key names only; the
// plan's key list already holds them.
func droppedKey(cluster, id string) string { return deletedPrefix(cluster, id) + "dropped.jsonl.zst" }

// savedKey is where a confirm attempt saves what it deletes: encrypted (store.EncryptedExt)
// when the store encrypts, since the copy holds every value deleted.
func savedKey(st store.Store, cluster, id, attempt string) string {
	key := deletedPrefix(cluster, id) + attempt + ".jsonl.zst"
	if len(store.EncryptTo(st)) > 0 {
		key += store.EncryptedExt
	}
	return key
}

// savedCopies returns the plan's saved copies by attempt ("" for one named before
// attempts were). Every copy but that of the attempt whose delete ran is of a confirm
// that deleted nothing, or one still running.
func savedCopies(ctx context.Context, st store.Store, cluster, id string) (map[string]string, error) {
	objs, err := st.List(ctx, deletedPrefix(cluster, id))
	if err != nil {
		return nil, fmt.Errorf("listing the saved copies of plan %s: %w", id, err)
	}
	out := map[string]string{}
	for _, o := range objs {
		rest := strings.TrimPrefix(o.Key, deletedPrefix(cluster, id))
		attempt, tail, _ := strings.Cut(rest, ".")
		if !isAttempt(attempt) {
			attempt, tail = "", rest
		}
		if tail == "jsonl.zst" || tail == "jsonl.zst"+store.EncryptedExt {
			out[attempt] = o.Key
		}
	}
	return out, nil
}

func stateKey(cluster, id, state string) string {
	return plansPrefix(cluster) + id + "." + state + ".json"
}

func newPlanID(t time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "p-" + t.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// scanRange reads every key in r at one revision and calls fn for each, in key order.
// rev 0 reads at the current revision, which it returns. etcd 3.7+ streams the range
// (RangeStream); older servers are read in pages (pagedRange).
func scanRange(ctx context.Context, cli *clientv3.Client, r Range, rev, page int64, keysOnly bool, fn func(k []byte, mod int64, val []byte, lease int64) error) (int64, error) {
	if streaming {
		opts := []clientv3.OpOption{clientv3.WithRange(r.End)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		got, err := streamRange(ctx, cli, r, rev, opts, fn)
		if status.Code(err) != codes.Unimplemented {
			return got, err
		}
	}
	return pagedRange(ctx, cli, r, rev, page, keysOnly, fn)
}

// streaming is switched off by tests, to cover the paged reads older servers get.
var streaming = true

// streamRange reads r with etcd's RangeStream; it returns codes.Unimplemented, before
// calling fn, from a server that predates it.
func streamRange(ctx context.Context, cli *clientv3.Client, r Range, rev int64, opts []clientv3.OpOption, fn func(k []byte, mod int64, val []byte, lease int64) error) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the stream if fn fails
	if rev > 0 {
		opts = append(opts[:len(opts):len(opts)], clientv3.WithRev(rev))
	}
	ch, err := cli.GetStream(ctx, r.Start, opts...)
	if err != nil {
		return rev, err
	}
	for chunk := range ch {
		if err := chunk.Err(); err != nil {
			if status.Code(err) == codes.Unimplemented {
				return rev, err
			}
			return rev, fmt.Errorf("reading %s at revision %d: %w", r, rev, err)
		}
		for _, kv := range chunk.Kvs {
			if err := fn(kv.Key, kv.ModRevision, kv.Value, kv.Lease); err != nil {
				return rev, err
			}
		}
		if chunk.Header != nil && rev == 0 {
			rev = chunk.Header.Revision // the server pins the whole stream to this revision
		}
	}
	if rev == 0 {
		return rev, fmt.Errorf("reading %s: etcd's range stream ended without a revision", r)
	}
	return rev, nil
}

// MakePlan reads the range at one revision and stores the plan: its summary and, in a
// separate object, every key with its mod revision, which a confirm compares against.
func MakePlan(ctx context.Context, cli *clientv3.Client, st store.Store, r Range, opts PlanOptions) (*Plan, error) {
	now := time.Now().UTC()
	p := &Plan{ID: newPlanID(now), Cluster: opts.Cluster, Range: r, ByType: map[string]int64{}, Sample: []string{},
		CreatedAt: now, ExpiresAt: now.Add(opts.TTL)}
	p.User, p.Host = who()
	if err := holdsRecords(r, p.Cluster); err != nil {
		return nil, err
	}
	// A plan stores its bounds as JSON strings, which cannot hold such bytes: its confirm
	// would never match the range. The keys inside a range may be any bytes.
	if !utf8.ValidString(r.Start) || r.End != fromKeyEnd && !utf8.ValidString(r.End) {
		return nil, fmt.Errorf("the range %s has a bound that is not valid UTF-8, which a plan cannot hold yet: give a range or prefix with UTF-8 bounds around the keys (they may hold any bytes), e.g. the part of the key before its first such byte with --prefix, and read the dry run's keys", r)
	}
	kw, err := newEntryWriter(ctx, st, planKeysKey(p.Cluster, p.ID))
	if err != nil {
		return nil, err
	}
	namespaces := map[string]bool{}
	var criticalKey, criticalWhy string
	var sizes int64
	rev, err := scanRange(ctx, cli, r, 0, opts.PageSize, false, func(k []byte, mod int64, val []byte, _ int64) error {
		key := string(k)
		if p.KeyCount == 0 {
			p.FirstKey = key
		}
		p.LastKey = key
		p.KeyCount++
		sizes += int64(len(val))
		if len(p.Sample) < sampleSize {
			p.Sample = append(p.Sample, key)
		}
		if typ, ns, ok := resource(key); ok {
			p.ByType[typ]++
			if ns != "" {
				namespaces[ns] = true
			}
		}
		if criticalKey == "" {
			if why := critical(key); why != "" {
				criticalKey, criticalWhy = key, why
			}
		}
		return kw.write(entry{Key: k, Mod: mod})
	})
	if err != nil {
		kw.Abort(err)
		return nil, err
	}
	if err := kw.Close(); err != nil {
		return nil, fmt.Errorf("storing the plan's keys: %w", err)
	}
	p.Revision, p.ValueBytes = rev, sizes

	p.Warnings = rangeWarnings(r)
	switch {
	case p.KeyCount == 0:
		p.Warnings = append(p.Warnings, "the range is empty: nothing would be deleted")
	case opts.MaxKeys > 0 && p.KeyCount > opts.MaxKeys:
		p.Warnings = append(p.Warnings, fmt.Sprintf("%d keys is more than --max-keys %d", p.KeyCount, opts.MaxKeys))
	}
	if len(p.ByType) > 1 {
		p.Warnings = append(p.Warnings, fmt.Sprintf("the range spans %d resource types: %s", len(p.ByType), strings.Join(topTypes(p.ByType, 8), ", ")))
	}
	if len(namespaces) > 1 {
		p.Warnings = append(p.Warnings, fmt.Sprintf("the range spans %d namespaces", len(namespaces)))
	}
	if criticalKey != "" {
		p.Warnings = append(p.Warnings, fmt.Sprintf("the range includes %s, which %s", criticalKey, criticalWhy))
	}
	if p.Warnings == nil {
		p.Warnings = []string{}
	}

	if p.Digest, err = p.digest(); err != nil {
		return nil, err
	}
	b, err := jsonBytes(p)
	if err != nil {
		return nil, err
	}
	if err := store.PutBytes(ctx, st, planKey(p.Cluster, p.ID), b); err != nil {
		return nil, fmt.Errorf("storing plan %s: %w", p.ID, err)
	}
	if err := record(ctx, st, Event{Event: "plan", PlanID: p.ID, Cluster: p.Cluster, EtcdUser: opts.EtcdUser, Range: r, Keys: p.KeyCount,
		Result: fmt.Sprintf("planned, %d warnings", len(p.Warnings))}); err != nil {
		return nil, err
	}
	return p, nil
}

// topTypes lists the types with most keys first, "type (count)".
func topTypes(by map[string]int64, n int) []string {
	types := make([]string, 0, len(by))
	for t := range by {
		types = append(types, t)
	}
	sort.Slice(types, func(i, j int) bool {
		if by[types[i]] != by[types[j]] {
			return by[types[i]] > by[types[j]]
		}
		return types[i] < types[j]
	})
	out := make([]string, 0, n)
	for i, t := range types {
		if i == n {
			out = append(out, fmt.Sprintf("and %d more", len(types)-n))
			break
		}
		out = append(out, fmt.Sprintf("%s (%d)", t, by[t]))
	}
	return out
}

// ErrPlanNotFound is returned for an unknown plan id.
var ErrPlanNotFound = errors.New("plan not found")

// LoadPlan reads a stored plan.
func LoadPlan(ctx context.Context, st store.Store, cluster, id string) (*Plan, error) {
	b, err := store.ReadAll(ctx, st, planKey(cluster, id), 1<<20)
	if errors.Is(err, store.ErrNotExist) {
		return nil, fmt.Errorf("%w: no plan %s for cluster %s; plans are listed by `etcdguard guard plans`, and a plan of another cluster cannot run here", ErrPlanNotFound, id, cluster)
	}
	if err != nil {
		return nil, err
	}
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("plan %s is not valid JSON: %w", id, err)
	}
	return &p, nil
}

func jsonBytes(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }

// digest is over the plan's canonical JSON, so a stored plan only re-spaced or re-ordered
// keeps it and any change of what it says does not. The canonical form is that of the
// plan as read back: JSON turns a key that is not UTF-8 into U+FFFD, so the plan MakePlan
// holds and the one a confirm loads would otherwise never hash alike.
func (p *Plan) digest() (string, error) {
	c := *p
	c.Digest = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return "", err
	}
	var back Plan
	if err := json.Unmarshal(b, &back); err != nil {
		return "", err
	}
	if b, err = json.Marshal(&back); err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// planIDPattern is what newPlanID makes.
var planIDPattern = regexp.MustCompile(`^p-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$`)

// Validate checks that a stored plan says what MakePlan would have written for it: it is
// plan id, its range is one Interpret makes, and its summary (what the operator read in
// --dry-run and confirms) and warnings agree with that range. A plan object edited or
// damaged in the store is refused rather than confirmed for something it does not say.
// The summary against etcd is Confirm's to check.
func (p *Plan) Validate(id string) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("the stored plan is damaged or edited: "+format, a...)
	}
	r := p.Range
	switch {
	case p.ID != id:
		return bad("it is stored as %s but says it is %q", id, p.ID)
	case !planIDPattern.MatchString(p.ID):
		return bad("%q is no plan id", p.ID)
	case p.CreatedAt.UTC().Format("20060102T150405") != p.ID[2:17]:
		return bad("created at %s, which is not the time in its id", p.CreatedAt.Format(time.RFC3339))
	case p.Digest == "":
		return bad("it has no digest (an older etcdguard made it)")
	case r.Start == "" || r.End == "":
		return bad("its range %s has no start or no end", r)
	case r.DerivedFrom == "single key" && r.End != r.Start+"\x00",
		r.DerivedFrom == "prefix" && r.End != clientv3.GetPrefixRangeEnd(r.Start),
		r.DerivedFrom == "from-key" && r.End != fromKeyEnd:
		return bad("its range %s is not a %s", r, r.DerivedFrom)
	case r.DerivedFrom != "single key" && r.DerivedFrom != "prefix" && r.DerivedFrom != "from-key" && r.DerivedFrom != "explicit range end":
		return bad("its range is derived from %q", r.DerivedFrom)
	case p.Revision <= 0 || p.KeyCount < 0 || p.ValueBytes < 0:
		return bad("revision %d, %d keys, %d bytes", p.Revision, p.KeyCount, p.ValueBytes)
	case p.KeyCount == 0 && (p.FirstKey != "" || p.LastKey != "" || len(p.Sample) > 0 || p.ValueBytes > 0):
		return bad("it has no keys but names some")
	case p.KeyCount > 0 && (len(p.Sample) != int(min(p.KeyCount, sampleSize)) || p.Sample[0] != p.FirstKey || p.FirstKey > p.LastKey):
		return bad("its first key, last key and sample do not agree with %d keys", p.KeyCount)
	}
	var typed int64
	for typ, n := range p.ByType {
		if n <= 0 {
			return bad("%d keys of type %q", n, typ)
		}
		typed += n
	}
	if typed > p.KeyCount {
		return bad("%d keys by type, more than its %d keys", typed, p.KeyCount)
	}
	// Keys that are not UTF-8 come back from JSON changed (U+FFFD), so only keys that went
	// through it unchanged can be placed in the range.
	keys := append([]string{r.Start, r.End, p.FirstKey, p.LastKey}, p.Sample...)
	if !slices.ContainsFunc(keys, func(k string) bool { return strings.ContainsRune(k, utf8.RuneError) }) && p.KeyCount > 0 {
		if !r.Contains(p.FirstKey) || !r.Contains(p.LastKey) {
			return bad("its first or last key is outside its range %s", r)
		}
		for i, k := range p.Sample {
			if i > 0 && k <= p.Sample[i-1] || k > p.LastKey {
				return bad("its sample is not %d keys in order from the first", len(p.Sample))
			}
		}
	}
	// The warnings that follow from the summary alone must all be there: without them a
	// confirm would not ask for --accept-warnings.
	want := rangeWarnings(r)
	if p.KeyCount == 0 {
		want = append(want, "the range is empty: nothing would be deleted")
	}
	if len(p.ByType) > 1 {
		want = append(want, fmt.Sprintf("the range spans %d resource types: %s", len(p.ByType), strings.Join(topTypes(p.ByType, 8), ", ")))
	}
	for _, w := range want {
		if !slices.Contains(p.Warnings, w) {
			return bad("it lacks the warning %q", w)
		}
	}
	if d, err := p.digest(); err != nil || d != p.Digest {
		return bad("what it says does not match its digest %s", p.Digest)
	}
	return nil
}
