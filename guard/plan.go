package guard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

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
func deletedKey(cluster, id string) string  { return cluster + "/guard/deleted/" + id + ".jsonl.zst" }
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
// (RangeStream); older servers are read in pages of `page` keys, each of which makes etcd
// count the rest of the range, so paging costs grow with the square of the range there.
func scanRange(ctx context.Context, cli *clientv3.Client, r Range, rev, page int64, keysOnly bool, fn func(k []byte, mod int64, val []byte, lease int64) error) (int64, error) {
	opts := []clientv3.OpOption{clientv3.WithRange(r.End)}
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if streaming {
		got, err := streamRange(ctx, cli, r, rev, opts, fn)
		if status.Code(err) != codes.Unimplemented {
			return got, err
		}
	}
	if page <= 0 {
		page = 1000
	}
	start := r.Start
	for {
		// etcd returns a range in ascending key order; asking for a sort would make it read
		// the whole range for every page before applying the limit.
		popts := append(opts[:len(opts):len(opts)], clientv3.WithLimit(page))
		if rev > 0 {
			popts = append(popts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, start, popts...)
		if err != nil {
			return rev, fmt.Errorf("reading %s at revision %d: %w", r, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv.Key, kv.ModRevision, kv.Value, kv.Lease); err != nil {
				return rev, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
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

	b, err := json.MarshalIndent(p, "", "  ")
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
