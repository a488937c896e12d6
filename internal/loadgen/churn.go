package loadgen

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ChurnOptions describe a steady, Kubernetes-like write workload.
type ChurnOptions struct {
	Prefix      string        // default "/registry"
	Rate        float64       // writes (etcd revisions) per second; required
	Duration    time.Duration // how long to write; 0: until ctx ends (or Writes)
	Writes      int64         // if > 0, stop after this many writes
	Concurrency int           // parallel writers; default 16
	ValueSize   int           // mean value size, each varies ±50%; default 1024
	Seed        int64
	Namespaces  int // for created objects; default 10
}

// ChurnStats describe what Churn wrote. Every counted write is one etcd revision.
type ChurnStats struct {
	Writes    int64 // successful writes: revisions added to etcd
	Updates   int64 // puts over existing keys
	Creates   int64 // puts of new keys
	Deletes   int64
	Txns      int64 // multi-op transactions (each one write)
	LeasePuts int64 // new events attached to a lease
	Leases    int   // leases granted (TTL 3600s, never revoked)
	Errors    int64 // failed writes (the run goes on)
	FirstErr  error
	Duration  time.Duration
	Rate      float64 // achieved writes per second
	StartRev  int64   // etcd revision before the first write
	LastRev   int64   // highest revision a write returned
}

const (
	churnTick      = 10 * time.Millisecond
	churnSlots     = 256 // keys are sharded into slots; one worker owns a slot, so per-key order holds
	churnLeaseTTL  = 3600
	churnLeaseEach = 500 // writes per lease, as kube-apiserver reuses one lease for a minute of events
	churnCreateIdx = 1 << 32
)

type churnKind int

const (
	opUpdate churnKind = iota
	opCreate
	opDelete
	opTxn
	opLeasePut
)

type liveKey struct{ key, typ string }

type churnSub struct {
	liveKey
	del bool
	new bool // a create (for counting)
}

type churnOp struct {
	seq   uint64
	kind  churnKind
	subs  []churnSub // one for every kind but opTxn
	epoch int64      // lease epoch, for opLeasePut
}

// Churn writes at o.Rate writes per second for o.Duration (or until ctx ends), the mix a
// Kubernetes control plane produces: ~60% updates of existing objects, ~15% creates,
// ~10% deletes, ~10% transactions of 2–4 puts and deletes, ~5% new events attached to a
// lease (one lease granted per ~500 writes and reused). It works on the keys under
// o.Prefix that exist when it starts and those it creates.
//
// The sequence of operations, their keys and values depend only on o.Seed and the
// keys present at the start, not on Concurrency or timing: keys are sharded into
// slots, a transaction stays within one slot, and each slot is written by one worker
// in order, so a run of o.Writes writes leaves the same keyspace whatever Concurrency.
//
// A failed write is counted in Errors and the run goes on; Churn returns an error only
// when nothing could be written, or the keyspace could not be read.
func Churn(ctx context.Context, cli *clientv3.Client, o ChurnOptions) (ChurnStats, error) {
	if o.Rate <= 0 {
		return ChurnStats{}, errors.New("churn: rate must be > 0")
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	o.Concurrency = min(o.Concurrency, churnSlots)
	g := newGen(Options{Prefix: o.Prefix, ValueSize: o.ValueSize, Seed: o.Seed, Namespaces: o.Namespaces})
	o.Prefix = g.Prefix

	ls, startRev, err := readLive(ctx, cli, g.Prefix)
	if err != nil {
		return ChurnStats{}, fmt.Errorf("churn: reading the keys under %s: %w", g.Prefix, err)
	}

	// stop ends the pacing; writes already started finish under ctx, so every write
	// that reached etcd is counted.
	stop := ctx
	if o.Duration > 0 {
		var cancel context.CancelFunc
		stop, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}

	var (
		st    = ChurnStats{StartRev: startRev}
		mu    sync.Mutex
		last  atomic.Int64
		wg    sync.WaitGroup
		lease = &churnLeaser{cli: cli}
		chans = make([]chan *churnOp, o.Concurrency)
	)
	last.Store(startRev)
	start := time.Now()
	for w := range chans {
		chans[w] = make(chan *churnOp, 256)
		wg.Go(func() {
			var local ChurnStats
			for op := range chans[w] {
				if stop.Err() != nil {
					continue // drain
				}
				rev, err := applyChurn(ctx, cli, g, lease, op)
				if err != nil {
					if ctx.Err() != nil {
						continue // the run's end, not a failure
					}
					local.Errors++
					if local.FirstErr == nil {
						local.FirstErr = err
					}
					continue
				}
				for cur := last.Load(); rev > cur && !last.CompareAndSwap(cur, rev); cur = last.Load() {
				}
				local.Writes++
				switch op.kind {
				case opUpdate:
					local.Updates++
				case opCreate:
					local.Creates++
				case opDelete:
					local.Deletes++
				case opTxn:
					local.Txns++
				case opLeasePut:
					local.LeasePuts++
				}
			}
			mu.Lock()
			st.Writes += local.Writes
			st.Updates += local.Updates
			st.Creates += local.Creates
			st.Deletes += local.Deletes
			st.Txns += local.Txns
			st.LeasePuts += local.LeasePuts
			st.Errors += local.Errors
			if st.FirstErr == nil {
				st.FirstErr = local.FirstErr
			}
			mu.Unlock()
		})
	}

	// The pacer: every tick, issue what the rate owes since the start.
	cg := newChurnGen(g, o.Seed, ls)
	t := time.NewTicker(churnTick)
	var issued int64
pace:
	for {
		due := int64(o.Rate * time.Since(start).Seconds())
		if o.Writes > 0 {
			due = min(due, o.Writes)
		}
		for ; issued < due; issued++ {
			op := cg.next()
			select {
			case chans[cg.slotOf(op)%o.Concurrency] <- op:
			case <-stop.Done():
				break pace
			}
		}
		if o.Writes > 0 && issued >= o.Writes {
			break
		}
		select {
		case <-t.C:
		case <-stop.Done():
			break pace
		}
	}
	t.Stop()
	for _, c := range chans {
		close(c)
	}
	wg.Wait()
	st.Duration = time.Since(start)
	st.Rate = float64(st.Writes) / st.Duration.Seconds()
	st.LastRev = last.Load()
	st.Leases = lease.granted
	if st.Writes == 0 && st.FirstErr != nil {
		return st, fmt.Errorf("churn: no write succeeded: %w", st.FirstErr)
	}
	return st, nil
}

// liveSet holds the keys Churn may update or delete, sharded into slots by key hash.
// The slot hashes the key without the prefix, so a run under another prefix makes the
// same choices.
type liveSet struct {
	prefix int // length of the prefix
	slots  [churnSlots][]liveKey
	total  int
}

func (l *liveSet) slotOf(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key[l.prefix:]))
	return int(h.Sum32() % churnSlots)
}

func (l *liveSet) add(k liveKey) {
	s := l.slotOf(k.key)
	l.slots[s] = append(l.slots[s], k)
	l.total++
}

// pick returns the position of a uniformly chosen key.
func (l *liveSet) pick(rng *rand.Rand) (slot, i int) {
	n := rng.IntN(l.total)
	for s := range l.slots {
		if n < len(l.slots[s]) {
			return s, n
		}
		n -= len(l.slots[s])
	}
	panic("loadgen: live set count is off")
}

func (l *liveSet) remove(slot, i int) {
	ks := l.slots[slot]
	ks[i] = ks[len(ks)-1]
	l.slots[slot] = ks[:len(ks)-1]
	l.total--
}

// readLive lists the keys under prefix in pages, at one revision.
func readLive(ctx context.Context, cli *clientv3.Client, prefix string) (*liveSet, int64, error) {
	ls := &liveSet{prefix: len(prefix)}
	from, end := prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/")
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(10000)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			ls.add(liveKey{k, typeOf(prefix, k)})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return ls, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// typeOf names a key's resource path, as meta does.
func typeOf(prefix, key string) string {
	rest := strings.TrimPrefix(key, prefix+"/")
	for _, r := range resources {
		if strings.HasPrefix(rest, r.path+"/") {
			return r.path
		}
	}
	if i := strings.IndexByte(rest, '/'); i > 0 {
		return rest[:i]
	}
	return "other"
}

// churnGen decides the operations, in order, from the seed alone.
type churnGen struct {
	g       *gen
	rng     *rand.Rand
	live    *liveSet
	seq     uint64
	creates int
}

func newChurnGen(g *gen, seed int64, live *liveSet) *churnGen {
	s := splitmix(uint64(seed) ^ 0x636875726e) // "churn"
	return &churnGen{g: g, rng: rand.New(rand.NewPCG(s, splitmix(s))), live: live}
}

// create names a new object (never one LoadK8sKeyspace writes: its index is beyond theirs).
func (c *churnGen) create() liveKey {
	it := c.g.meta(churnCreateIdx + c.creates)
	c.creates++
	return liveKey{it.key, it.typ}
}

// event names a new event object, the kind kube-apiserver attaches to a lease.
func (c *churnGen) event() liveKey {
	i := churnCreateIdx + c.creates
	c.creates++
	word := words[c.rng.IntN(len(words))]
	ns := c.g.namespaces[c.rng.IntN(len(c.g.namespaces))]
	name := word + "-" + strconv.FormatInt(int64(i), 36) + "-" + alnum(c.rng, 5) + "." + strconv.FormatUint(c.rng.Uint64()>>1, 16)
	return liveKey{c.g.Prefix + "/events/" + ns + "/" + name, "events"}
}

func (c *churnGen) next() *churnOp {
	op := &churnOp{seq: c.seq}
	c.seq++
	roll := c.rng.IntN(100)
	if c.live.total == 0 && roll < 85 {
		roll = 60 // nothing to update or delete yet: create
	}
	switch {
	case roll < 60:
		s, i := c.live.pick(c.rng)
		op.kind, op.subs = opUpdate, []churnSub{{liveKey: c.live.slots[s][i]}}
	case roll < 75:
		k := c.create()
		c.live.add(k)
		op.kind, op.subs = opCreate, []churnSub{{liveKey: k, new: true}}
	case roll < 85:
		s, i := c.live.pick(c.rng)
		op.kind, op.subs = opDelete, []churnSub{{liveKey: c.live.slots[s][i], del: true}}
		c.live.remove(s, i)
	case roll < 95:
		op.kind, op.subs = opTxn, c.txn(2+c.rng.IntN(3))
	default:
		k := c.event()
		c.live.add(k)
		op.kind, op.subs, op.epoch = opLeasePut, []churnSub{{liveKey: k, new: true}}, int64(op.seq/churnLeaseEach)
	}
	return op
}

// txn builds n operations on distinct keys of one slot: updates and deletes of its keys
// (2:1), and creates when the slot runs short.
func (c *churnGen) txn(n int) []churnSub {
	slot := c.rng.IntN(churnSlots)
	if c.live.total > 0 {
		slot, _ = c.live.pick(c.rng)
	}
	subs := make([]churnSub, 0, n)
	picked := map[int]bool{}
	for len(subs) < n {
		ks := c.live.slots[slot]
		if len(picked) >= len(ks) {
			// Creates land in other slots: name new keys until one hashes into this slot.
			for {
				k := c.create()
				if c.live.slotOf(k.key) == slot {
					subs = append(subs, churnSub{liveKey: k, new: true})
					break
				}
			}
			continue
		}
		i := c.rng.IntN(len(ks))
		if picked[i] {
			continue
		}
		picked[i] = true
		subs = append(subs, churnSub{liveKey: ks[i], del: c.rng.IntN(3) == 0})
	}
	// Apply to the live set after picking, so the indexes above stay valid.
	for _, s := range subs {
		switch {
		case s.new:
			c.live.add(s.liveKey)
		case s.del:
			ks := c.live.slots[slot]
			for i := range ks {
				if ks[i].key == s.key {
					c.live.remove(slot, i)
					break
				}
			}
		}
	}
	return subs
}

func (c *churnGen) slotOf(op *churnOp) int { return c.live.slotOf(op.subs[0].key) }

// value builds a value for the j-th key of op, from (seed, seq, j) alone, so workers
// build values in parallel and still deterministically.
func churnValue(g *gen, op *churnOp, j int, k liveKey) string {
	s := splitmix(uint64(g.Seed) ^ 0x76616c7565) // "value"
	rng := rand.New(rand.NewPCG(s^op.seq, splitmix(op.seq<<3|uint64(j))))
	it := item{key: k.key, typ: k.typ, rng: rng, size: g.ValueSize/2 + rng.IntN(g.ValueSize+1)}
	return string(g.value(it))
}

func applyChurn(ctx context.Context, cli *clientv3.Client, g *gen, lease *churnLeaser, op *churnOp) (int64, error) {
	switch op.kind {
	case opDelete:
		resp, err := cli.Delete(ctx, op.subs[0].key)
		if err != nil {
			return 0, fmt.Errorf("delete %s: %w", op.subs[0].key, err)
		}
		return resp.Header.Revision, nil
	case opTxn:
		ops := make([]clientv3.Op, len(op.subs))
		for j, s := range op.subs {
			if s.del {
				ops[j] = clientv3.OpDelete(s.key)
			} else {
				ops[j] = clientv3.OpPut(s.key, churnValue(g, op, j, s.liveKey))
			}
		}
		resp, err := cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return 0, fmt.Errorf("txn of %d ops: %w", len(ops), err)
		}
		return resp.Header.Revision, nil
	case opLeasePut:
		id, err := lease.get(ctx, op.epoch)
		if err != nil {
			return 0, err
		}
		resp, err := cli.Put(ctx, op.subs[0].key, churnValue(g, op, 0, op.subs[0].liveKey), clientv3.WithLease(id))
		if err != nil {
			return 0, fmt.Errorf("put %s with lease %x: %w", op.subs[0].key, id, err)
		}
		return resp.Header.Revision, nil
	default:
		resp, err := cli.Put(ctx, op.subs[0].key, churnValue(g, op, 0, op.subs[0].liveKey))
		if err != nil {
			return 0, fmt.Errorf("put %s: %w", op.subs[0].key, err)
		}
		return resp.Header.Revision, nil
	}
}

// churnLeaser grants one lease per epoch (churnLeaseEach writes) and hands it out
// until the next epoch's first lease put. A lease grant adds no revision.
type churnLeaser struct {
	cli     *clientv3.Client
	mu      sync.Mutex
	epoch   int64
	id      clientv3.LeaseID
	granted int
}

func (l *churnLeaser) get(ctx context.Context, epoch int64) (clientv3.LeaseID, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.granted > 0 && epoch <= l.epoch {
		return l.id, nil
	}
	resp, err := l.cli.Grant(ctx, churnLeaseTTL)
	if err != nil {
		return 0, fmt.Errorf("grant a lease: %w", err)
	}
	l.epoch, l.id = epoch, resp.ID
	l.granted++
	return l.id, nil
}
