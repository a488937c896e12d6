package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// daemon is an `etcdguard daemon --delta` perf started, with its /metrics URL.
type daemon struct {
	*server
	metrics string
	store   string
}

// startDaemon starts etcdguard's daemon capturing deltas into store and waits for its
// first full snapshot there.
func (e *env) startDaemon(ctx context.Context, w *world, store, name string) (*daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s, err := e.procs.start("etcdguard daemon", filepath.Join(w.dir, name+".log"), w.egEnv, e.opts.etcdguard, "daemon",
		"--store", store, "--endpoints", w.etcd.endpoint, "--schedule", "@every 24h", "--election-ttl", "5s",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--delta", "--delta-flush", "1s", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	d := &daemon{server: s, metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port), store: store}
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		if !s.alive() {
			return nil, s.failure("exited")
		}
		if out, err := e.run(ctx, w.egEnv, e.opts.etcdguard, "snapshot", "list", "--store", store, "-o", "json"); err == nil {
			var ms []struct{}
			if json.Unmarshal(out, &ms) == nil && len(ms) > 0 {
				return d, nil
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, s.failure("took no full snapshot in 10 minutes")
}

// scrape reads the daemon's gauges (the first series of each name).
func scrape(ctx context.Context, url string, names ...string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return parseMetrics(resp.Body, names...), nil
}

func parseMetrics(r io.Reader, names ...string) map[string]float64 {
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(f[0], "{")
		if _, seen := m[name]; seen || !slices.Contains(names, name) {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			m[name] = v
		}
	}
	return m
}

// waitStored waits until the daemon has stored etcd's current revision in a segment.
func (e *env) waitStored(ctx context.Context, w *world, d *daemon) (time.Duration, error) {
	rev, err := e.etcdRevision(ctx, w.etcd.endpoint)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	var last float64
	for time.Since(t0) < 10*time.Minute {
		if !d.alive() {
			return 0, d.failure("died while storing deltas")
		}
		if m, err := scrape(ctx, d.metrics, "etcdguard_delta_last_revision"); err == nil {
			last = m["etcdguard_delta_last_revision"]
			if int64(last) >= rev {
				return time.Since(t0), nil
			}
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return 0, d.failure(fmt.Sprintf("stored revision %.0f of %d after 10 minutes", last, rev))
}

func (e *env) runPITR(ctx context.Context, w *world) ([]Result, error) {
	store := "s3://bench/pitr"
	d, err := e.startDaemon(ctx, w, store, "daemon-pitr")
	if err != nil {
		return nil, err
	}
	defer e.procs.remove(d.server)
	out, err := e.run(ctx, w.egEnv, e.opts.etcdguard, "snapshot", "list", "--store", store, "-o", "json")
	if err != nil {
		return nil, err
	}
	var snaps []struct {
		ID       string `json:"id"`
		Revision int64  `json:"revision"`
	}
	if err := json.Unmarshal(out, &snaps); err != nil || len(snaps) == 0 {
		return nil, fmt.Errorf("snapshot list of %s: %v: %s", store, err, out)
	}
	snap := snaps[0]
	// loadgen's writes are not all one revision each (transactions, deletes of absent keys)
	// and a busy machine writes less than asked: churn until etcd is pitrRevs past the snapshot.
	var writes, secs float64
	for {
		rev, err := e.etcdRevision(ctx, w.etcd.endpoint)
		if err != nil {
			return nil, err
		}
		left := e.opts.pitrRevs - int(rev-snap.Revision)
		if left <= 0 {
			break
		}
		dur := max(time.Second, time.Duration(float64(left)/float64(e.opts.pitrRate)*float64(time.Second)).Round(time.Second))
		e.logf("pitr: full snapshot %s at revision %d, etcd at %d; churn %d writes/s for %s", snap.ID, snap.Revision, rev, e.opts.pitrRate, dur)
		t0 := time.Now()
		churn, err := e.run(ctx, nil, e.tool("loadgen"), "-endpoints", w.etcd.endpoint, "-rate", strconv.Itoa(e.opts.pitrRate), "-duration", dur.String())
		if err != nil {
			return nil, err
		}
		secs += time.Since(t0).Seconds()
		e.logf("%s", strings.TrimSpace(string(churn)))
		n, _ := churnStats(churn)
		writes += n
	}
	achieved := writes / max(secs, 1e-9)
	drain, err := e.waitStored(ctx, w, d)
	if err != nil {
		return nil, err
	}
	e.procs.remove(d.server)

	out, err = e.run(ctx, w.egEnv, e.opts.etcdguard, "timeline", "--store", store, "-o", "json")
	if err != nil {
		return nil, err
	}
	var tl struct {
		Restorable []struct {
			LastRev int64 `json:"last_rev"`
		} `json:"restorable"`
	}
	if err := json.Unmarshal(out, &tl); err != nil || len(tl.Restorable) == 0 {
		return nil, fmt.Errorf("etcdguard timeline shows no restorable window (%v): %s", err, out)
	}
	target := tl.Restorable[len(tl.Restorable)-1].LastRev - 1
	e.logf("pitr: restorable to %d; restoring to %d (+%d revisions) vs the snapshot alone", target+1, target, target-snap.Revision)

	outDir := filepath.Join(w.dir, "out")
	peer := "http://127.0.0.1:2380"
	member := []string{"--store", store, "--name", "m1", "--initial-cluster", "m1=" + peer, "--initial-advertise-peer-urls", peer, "-o", "json"}
	var mu sync.Mutex
	var replayed, events float64
	parse := func(b []byte) error {
		var r struct {
			Replayed *struct {
				Revisions int `json:"revisions_replayed"`
				Events    int `json:"events_replayed"`
			} `json:"replayed"`
			Revision int64 `json:"revision"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("restore -o json: %w", err)
		}
		if r.Revision != target || r.Replayed == nil {
			return fmt.Errorf("restore --revision %d restored revision %d", target, r.Revision)
		}
		mu.Lock()
		replayed, events = float64(r.Replayed.Revisions), float64(r.Replayed.Events)
		mu.Unlock()
		return nil
	}
	plainDir, pitrDir := filepath.Join(outDir, "r-plain"), filepath.Join(outDir, "r-pitr")
	jobs := []*job{
		{name: "restore --snapshot (the full snapshot alone)", argv: append([]string{e.opts.etcdguard, "restore", "--snapshot", snap.ID, "--data-dir", plainDir}, member...),
			env: w.egEnv, clean: rmAll(plainDir)},
		{name: "restore --revision (snapshot + deltas)", argv: append([]string{e.opts.etcdguard, "restore", "--revision", strconv.FormatInt(target, 10), "--data-dir", pitrDir}, member...),
			env: w.egEnv, keepOut: true, clean: rmAll(pitrDir), after: parse},
	}
	res, err := e.rounds(ctx, "pitr", w.size, w.etcd.version, w.dbBytes, w.watched(), jobs)
	_ = rmAll(plainDir, pitrDir)()
	if err != nil {
		return nil, err
	}
	for i := range res {
		res[i].Extra = map[string]float64{"churn_writes_per_s": achieved, "drain_s": drain.Seconds()}
	}
	p := &res[1]
	p.Extra["revisions_replayed"] = replayed
	p.Extra["events_replayed"] = events
	p.Extra["revisions_per_s"] = replayed / p.WallS
	if extra := p.WallS - res[0].WallS; extra > 0 {
		// What the replay adds to the plain restore, per revision.
		p.Extra["replay_revisions_per_s"] = replayed / extra
	}
	return res, nil
}

func (e *env) runLag(ctx context.Context, w *world) ([]Result, error) {
	var res []Result
	for i, rate := range e.opts.lagRates {
		store := fmt.Sprintf("s3://bench/lag-%d", rate)
		d, err := e.startDaemon(ctx, w, store, fmt.Sprintf("daemon-lag-%d", rate))
		if err != nil {
			return nil, err
		}
		e.logf("lag: churn %d writes/s for %s, sampling %s every 0.2s", rate, e.opts.lagDuration, d.metrics)
		lags, rss, sample := sampler(ctx, d.metrics)
		c0, e0, s0 := procCPU(d.pid()), procCPU(w.etcd.pid()), procCPU(w.s3.pid())
		t0 := time.Now()
		churn, err := e.run(ctx, nil, e.tool("loadgen"), "-endpoints", w.etcd.endpoint, "-rate", strconv.Itoa(rate), "-duration", e.opts.lagDuration.String())
		wall := time.Since(t0).Seconds()
		c1, e1, s1 := procCPU(d.pid()), procCPU(w.etcd.pid()), procCPU(w.s3.pid())
		sample()
		if err != nil {
			e.procs.remove(d.server)
			return nil, err
		}
		_, achieved := churnStats(churn)
		e.procs.remove(d.server)
		if len(*lags) == 0 {
			return nil, d.failure("no etcdguard_delta_lag_seconds sample from /metrics")
		}
		var cpu [3]float64
		for k, who := range []string{"etcdguard daemon", "etcd", "S3 server"} {
			if cpu[k], err = spent(who, []float64{c0, e0, s0}[k], []float64{c1, e1, s1}[k]); err != nil {
				return nil, err
			}
		}
		s := slices.Clone(*lags)
		slices.Sort(s)
		res = append(res, Result{
			Section: "lag", Contender: fmt.Sprintf("churn %d writes/s", rate), Size: w.size, Server: w.etcd.version, Order: i,
			DBBytes: w.dbBytes, Runs: 1, WallS: wall, Walls: []float64{wall},
			ClientCPUS: cpu[0], EtcdCPUS: cpu[1], S3CPUS: cpu[2], PeakRSSMiB: *rss,
			Extra: map[string]float64{
				"lag_p50_s": quantile(s, 0.5), "lag_p99_s": quantile(s, 0.99), "lag_max_s": s[len(s)-1],
				"samples": float64(len(s)), "churn_writes_per_s": achieved,
			},
		})
	}
	return res, nil
}

// sampler scrapes the daemon's delta lag and RSS every 0.2 s on the clock (each scrape on
// its own, so a slow one does not stretch the interval) until stop is called.
func sampler(ctx context.Context, url string) (lags *[]float64, rssMiB *float64, stop func()) {
	var mu sync.Mutex
	var ls []float64
	var peak float64
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	tick := time.NewTicker(200 * time.Millisecond)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, err := scrape(ctx, url, "etcdguard_delta_lag_seconds", "process_resident_memory_bytes")
				if err != nil {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if v, ok := m["etcdguard_delta_lag_seconds"]; ok && !math.IsNaN(v) {
					ls = append(ls, v)
				}
				peak = max(peak, m["process_resident_memory_bytes"]/(1<<20))
			}()
		}
	}()
	return &ls, &peak, func() {
		tick.Stop()
		cancel()
		wg.Wait()
	}
}
