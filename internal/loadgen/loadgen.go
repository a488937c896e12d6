// Package loadgen fills etcd with a Kubernetes-like keyspace, so tests, the
// demo and benchmarks run against data shaped like a real control plane's.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Options control the generated keyspace. The same Options (Concurrency
// aside) always produce the same keys and values.
type Options struct {
	Prefix      string // default "/registry"
	Keys        int    // number of keys, namespace objects included
	TargetBytes int64  // if > 0, overrides Keys: write keys until key+value bytes reach it
	ValueSize   int    // mean value size, each varies ±50%; default 1024
	Seed        int64
	Concurrency int // parallel Txns; default 8
	Namespaces  int // default 10
}

// Stats describe what was written.
type Stats struct {
	Keys     int
	Bytes    int64          // key + value bytes
	Revision int64          // etcd revision after the last write
	ByType   map[string]int // keys per resource path, e.g. "pods", "services/specs", "cert-manager.io/certificates"
	Duration time.Duration
}

const (
	txnOps = 100
	// etcd rejects requests over 1.5 MiB by default; 1 MiB of payload leaves
	// room for the per-op protobuf overhead.
	txnBytes = 1 << 20
)

// resource is one kind of object, stored as <Prefix>/<path>/[<ns>/]<name>
// like the kube-apiserver does (hence "minions" and "services/specs").
type resource struct {
	path       string
	namespaced bool
	weight     int
	apiVersion string
	kind       string
}

var resources = []resource{
	{"events", true, 24, "v1", "Event"},
	{"pods", true, 14, "v1", "Pod"},
	{"secrets", true, 9, "v1", "Secret"},
	{"configmaps", true, 8, "v1", "ConfigMap"},
	{"replicasets", true, 8, "apps/v1", "ReplicaSet"},
	{"endpointslices", true, 5, "discovery.k8s.io/v1", "EndpointSlice"},
	{"serviceaccounts", true, 5, "v1", "ServiceAccount"},
	{"services/specs", true, 4, "v1", "Service"},
	{"services/endpoints", true, 4, "v1", "Endpoints"},
	{"deployments", true, 4, "apps/v1", "Deployment"},
	{"rolebindings", true, 3, "rbac.authorization.k8s.io/v1", "RoleBinding"},
	{"leases", true, 2, "coordination.k8s.io/v1", "Lease"},
	{"cert-manager.io/certificates", true, 2, "cert-manager.io/v1", "Certificate"},
	{"cert-manager.io/certificaterequests", true, 2, "cert-manager.io/v1", "CertificateRequest"},
	{"clusterroles", false, 2, "rbac.authorization.k8s.io/v1", "ClusterRole"},
	{"clusterrolebindings", false, 2, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding"},
	{"certificatesigningrequests", false, 1, "certificates.k8s.io/v1", "CertificateSigningRequest"},
	{"minions", false, 1, "v1", "Node"},
	{"apiregistration.k8s.io/apiservices", false, 1, "apiregistration.k8s.io/v1", "APIService"},
	{"apiextensions.k8s.io/customresourcedefinitions", false, 1, "apiextensions.k8s.io/v1", "CustomResourceDefinition"},
}

var nsResource = resource{"namespaces", false, 0, "v1", "Namespace"}

var (
	totalWeight int
	wellKnownNS = []string{"default", "kube-system", "kube-public", "kube-node-lease",
		"cert-manager", "ingress-nginx", "monitoring", "logging", "payments", "checkout"}
	words = []string{"web", "api", "coredns", "etcd-backup", "frontend", "worker", "redis",
		"postgres", "kafka", "metrics-server", "controller", "scheduler", "gateway", "search"}
)

func init() {
	for _, r := range resources {
		totalWeight += r.weight
	}
}

// corpus is spliced into values so they compress about as well as real
// Kubernetes objects do, instead of not at all.
const corpus = `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"labels":{"app.kubernetes.io/name":"web",` +
	`"app.kubernetes.io/managed-by":"Helm"},"annotations":{"deployment.kubernetes.io/revision":"3"}},"spec":{"replicas":3,` +
	`"selector":{"matchLabels":{"app":"web"}},"template":{"spec":{"containers":[{"name":"web","image":"registry.k8s.io/pause:3.9",` +
	`"resources":{"requests":{"cpu":"100m","memory":"128Mi"}},"ports":[{"containerPort":8080,"protocol":"TCP"}],` +
	`"env":[{"name":"POD_NAMESPACE","valueFrom":{"fieldRef":{"fieldPath":"metadata.namespace"}}}],"imagePullPolicy":"IfNotPresent",` +
	`"terminationMessagePath":"/dev/termination-log"}],"restartPolicy":"Always","dnsPolicy":"ClusterFirst","serviceAccountName":"default"}}},` +
	`"status":{"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"}],"observedGeneration":3}}`

type item struct {
	key, typ string
	size     int // value size
	rng      *rand.Rand
}

type gen struct {
	Options
	namespaces []string
}

func newGen(o Options) *gen {
	if o.Prefix == "" {
		o.Prefix = "/registry"
	}
	if o.ValueSize <= 0 {
		o.ValueSize = 1024
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.Namespaces <= 0 {
		o.Namespaces = 10
	}
	g := &gen{Options: o}
	for i := range o.Namespaces {
		if i < len(wellKnownNS) {
			g.namespaces = append(g.namespaces, wellKnownNS[i])
		} else {
			g.namespaces = append(g.namespaces, fmt.Sprintf("team-%03d", i))
		}
	}
	return g
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// meta derives key i from (Seed, i) alone, so workers can generate any key
// in any order and the result does not depend on Concurrency.
func (g *gen) meta(i int) item {
	s := splitmix(uint64(g.Seed))
	rng := rand.New(rand.NewPCG(s, splitmix(s^uint64(i))))
	it := item{rng: rng, size: g.ValueSize/2 + rng.IntN(g.ValueSize+1)}
	id := strconv.FormatInt(int64(i), 36)
	if i < len(g.namespaces) {
		it.typ = nsResource.path
		it.key = g.Prefix + "/namespaces/" + g.namespaces[i]
		return it
	}
	r := resources[len(resources)-1]
	for w, j := rng.IntN(totalWeight), 0; j < len(resources); j++ {
		if w -= resources[j].weight; w < 0 {
			r = resources[j]
			break
		}
	}
	word := words[rng.IntN(len(words))]
	var name string
	switch r.path {
	case "minions":
		name = "node-" + id
	case "certificatesigningrequests":
		name = "csr-" + id + alnum(rng, 5)
	case "apiregistration.k8s.io/apiservices":
		name = "v1." + word + "-" + id + ".k8s.io"
	case "apiextensions.k8s.io/customresourcedefinitions":
		name = word + id + "s.example.io"
	case "events":
		name = word + "-" + id + "-" + alnum(rng, 5) + "." + strconv.FormatUint(rng.Uint64()>>1, 16)
	default:
		name = word + "-" + id + "-" + alnum(rng, 5)
	}
	it.typ = r.path
	if r.namespaced {
		it.key = g.Prefix + "/" + r.path + "/" + g.namespaces[rng.IntN(len(g.namespaces))] + "/" + name
	} else {
		it.key = g.Prefix + "/" + r.path + "/" + name
	}
	return it
}

func alnum(rng *rand.Rand, n int) string {
	const chars = "bcdfghjklmnpqrstvwxz2456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = chars[rng.IntN(len(chars))]
	}
	return string(b)
}

// value builds the item's value: a header naming the object, then 64-byte
// chunks that are half random bytes and half slices of corpus.
func (g *gen) value(it item) []byte {
	v := make([]byte, 0, it.size+64)
	v = append(v, "k8s\x00"...)
	v = append(v, it.typ...)
	v = append(v, 0)
	v = append(v, it.key[len(g.Prefix):]...)
	v = append(v, 0)
	var buf [8]byte
	for len(v) < it.size {
		n := min(64, it.size-len(v))
		if it.rng.IntN(2) == 0 {
			off := it.rng.IntN(len(corpus) - 64)
			v = append(v, corpus[off:off+n]...)
			continue
		}
		for n > 0 {
			u := it.rng.Uint64()
			for k := range buf {
				buf[k] = byte(u >> (8 * k))
			}
			c := min(n, 8)
			v = append(v, buf[:c]...)
			n -= c
		}
	}
	return v
}

// LoadK8sKeyspace writes the keyspace described by opts with parallel Txns
// of up to 100 puts and about 1 MiB each.
func LoadK8sKeyspace(ctx context.Context, cli *clientv3.Client, opts Options) (Stats, error) {
	g := newGen(opts)
	start := time.Now()
	keys := g.Keys
	if g.TargetBytes > 0 {
		var total int64
		for keys = 0; total < g.TargetBytes; keys++ {
			it := g.meta(keys)
			total += int64(len(it.key) + it.size)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		rev      atomic.Int64
		mu       sync.Mutex
		firstErr error
		st       = Stats{ByType: map[string]int{}}
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	commit := func(ops []clientv3.Op) error {
		for attempt := 0; ; attempt++ {
			resp, err := cli.Txn(ctx).Then(ops...).Commit()
			if errors.Is(err, rpctypes.ErrTooManyRequests) && attempt < 10 {
				// etcd's apply queue is full; puts are idempotent, so wait and resend.
				time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
				continue
			}
			if err != nil {
				return err
			}
			for {
				cur := rev.Load()
				if resp.Header.Revision <= cur || rev.CompareAndSwap(cur, resp.Header.Revision) {
					return nil
				}
			}
		}
	}
	for range g.Concurrency {
		wg.Go(func() {
			byType := map[string]int{}
			var n int
			var bytes int64
			defer func() {
				mu.Lock()
				st.Keys += n
				st.Bytes += bytes
				for k, c := range byType {
					st.ByType[k] += c
				}
				mu.Unlock()
			}()
			ops := make([]clientv3.Op, 0, txnOps)
			for ctx.Err() == nil {
				lo := int(next.Add(txnOps)) - txnOps
				if lo >= keys {
					return
				}
				hi := min(lo+txnOps, keys)
				ops = ops[:0]
				var batchBytes, bn int
				var bb int64
				batchTypes := map[string]int{}
				flush := func() bool {
					if len(ops) == 0 {
						return true
					}
					if err := commit(ops); err != nil {
						fail(fmt.Errorf("put %d keys: %w", len(ops), err))
						return false
					}
					n += bn
					bytes += bb
					for k, c := range batchTypes {
						byType[k] += c
					}
					clear(batchTypes)
					ops, batchBytes, bn, bb = ops[:0], 0, 0, 0
					return true
				}
				for i := lo; i < hi; i++ {
					it := g.meta(i)
					v := g.value(it)
					sz := len(it.key) + len(v)
					if batchBytes+sz > txnBytes && !flush() {
						return
					}
					ops = append(ops, clientv3.OpPut(it.key, string(v)))
					batchBytes += sz
					bn++
					bb += int64(sz)
					batchTypes[it.typ]++
				}
				if !flush() {
					return
				}
			}
		})
	}
	wg.Wait()
	st.Revision = rev.Load()
	st.Duration = time.Since(start)
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return st, firstErr
}
