package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
)

// The soak (issue 15, item 6), behind ETCDGUARD_SOAK=<duration> (`make soak`, not CI): three
// `daemon --delta` against a 3-member etcd under steady Kubernetes-like churn, storing to
// versitygw through a proxy that injects every kind of S3 fault on 5% of requests, with the
// leader killed (-9) and restarted every few minutes. At the end, `restore --revision` at 20
// random revisions spread over the run must equal etcd's `get --rev` key for key.
//
// With ETCDGUARD_SOAK_REPORT=<file> (make soak: docs/soak.md) a passing run writes its report there.
// Knobs (all optional): ETCDGUARD_SOAK_RATE writes/s (default 50), ETCDGUARD_SOAK_FAULT_RATE
// (0.05), ETCDGUARD_SOAK_KILL_EVERY (3m, or a third of a shorter run), ETCDGUARD_SOAK_RESTORES
// (20), ETCDGUARD_SOAK_RESTORE_FAULTS=1 (restores behind the faults too), ETCDGUARD_FAULT_SEED
// to replay a run's random choices.
func TestSoak(t *testing.T) {
	spec := os.Getenv("ETCDGUARD_SOAK")
	if spec == "" {
		t.Skip("the soak runs only with ETCDGUARD_SOAK=<duration>, e.g. ETCDGUARD_SOAK=30m (make soak)")
	}
	dur, err := time.ParseDuration(spec)
	if err != nil || dur <= 0 {
		t.Fatalf("ETCDGUARD_SOAK=%q: want a duration such as 30m", spec)
	}
	rate := soakEnv(t, "ETCDGUARD_SOAK_RATE", 50.0)
	faultRate := soakEnv(t, "ETCDGUARD_SOAK_FAULT_RATE", 0.05)
	killEvery := soakEnv(t, "ETCDGUARD_SOAK_KILL_EVERY", min(3*time.Minute, dur/3))
	restores := soakEnv(t, "ETCDGUARD_SOAK_RESTORES", 20)
	seed := testharness.FaultSeed(t)
	t.Logf("seed %d (ETCDGUARD_FAULT_SEED replays it): %s of churn at %.0f writes/s, %.0f%% S3 faults, leader killed every %s",
		seed, dur, rate, faultRate*100, killEvery)
	rng := rand.New(rand.NewSource(seed))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	up := testharness.StartVersityGW(t)
	proxy := testharness.StartS3FaultProxy(t, up, seed)
	etcd := testharness.StartEtcdCluster(t, 3)
	cli := etcd.Client(t)
	if _, err := loadgen.LoadK8sKeyspace(ctx, cli, loadgen.Options{Keys: 2000, Seed: seed}); err != nil {
		t.Fatal(err)
	}

	// Faults from the first request on: the daemons start, elect and capture under them.
	proxy.Set(testharness.FaultRule{Rate: faultRate, Faults: testharness.AllFaults, Latency: 2 * time.Second})
	srv := proxy.Server()
	storeURL := srv.URL("soak")
	ports := testharness.FreePorts(t, 3)
	sup := &soakSupervisor{t: t, done: make(chan struct{})}
	for i := range 3 {
		addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
		eps := append([]string{etcd.Endpoints()[i]}, etcd.Endpoints()...) // its local member first, as on a master
		sup.add(addr, srv.Env(), "--cluster", "prod", "--store", storeURL, "--endpoints", strings.Join(eps, ","),
			"--schedule", fmt.Sprintf("@every %s", min(5*time.Minute, max(dur/6, 30*time.Second))),
			"--election-ttl", "5s", "--delta", "--delta-flush", "1s", "--check-interval", "10s",
			// A stalled request ends after 10s instead of the default minute; retention keeps
			// everything, so every revision of the run stays restorable.
			"--store-timeout", "10s", "--keep-last", "100000", "--keep-within", "720h")
	}
	t.Cleanup(sup.stop)

	// The sampler: etcd's revision and the highest revision any daemon says it stored, twice
	// a second, for the write-to-stored lag; the leader's etcdguard_delta_lag_seconds.
	var (
		smu       sync.Mutex
		stored    int64
		pending   []revAt
		e2eLag    []time.Duration
		gaugeLag  []float64
		noLeader  int
		samplerWG sync.WaitGroup
	)
	sampleCtx, stopSampler := context.WithCancel(ctx)
	samplerWG.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
			gctx, gcancel := context.WithTimeout(sampleCtx, 2*time.Second)
			resp, err := cli.Get(gctx, "/soak-probe")
			gcancel()
			now := time.Now()
			leader := false
			smu.Lock()
			if err == nil {
				pending = append(pending, revAt{now, resp.Header.Revision})
			}
			for _, addr := range sup.addrs() {
				if v := metric(addr, "etcdguard_delta_last_revision"); int64(v) > stored {
					stored = int64(v)
				}
				if metric(addr, "etcdguard_is_leader") == 1 {
					leader = true
					if v := metric(addr, "etcdguard_delta_lag_seconds"); v >= 0 {
						gaugeLag = append(gaugeLag, v)
					}
				}
			}
			if !leader {
				noLeader++
			}
			for len(pending) > 0 && pending[0].rev <= stored {
				e2eLag = append(e2eLag, now.Sub(pending[0].at))
				pending = pending[1:]
			}
			smu.Unlock()
		}
	})

	// The churn, for the whole run.
	var churn loadgen.ChurnStats
	var churnErr error
	churnDone := make(chan struct{})
	go func() {
		defer close(churnDone)
		churn, churnErr = loadgen.Churn(ctx, cli, loadgen.ChurnOptions{Rate: rate, Duration: dur, Seed: seed, Concurrency: 8})
	}()

	// Kill the leader every killEvery, as a node crash would; the supervisor restarts it
	// like a kubelet restarts a static pod.
	kills := 0
	start := time.Now()
	for next := start.Add(killEvery); ; next = next.Add(killEvery) {
		select {
		case <-churnDone:
		case <-time.After(time.Until(next)):
			if time.Until(start.Add(dur)) < killEvery/3 {
				continue // too close to the end to see the new leader catch up: wait for the churn
			}
			if sup.killLeader(30 * time.Second) {
				kills++
			}
			continue
		}
		break
	}
	if churnErr != nil {
		t.Fatalf("churn: %v", churnErr)
	}
	t.Logf("churn: %d writes (%d updates, %d creates, %d deletes, %d txns, %d lease puts), %d errors, %.1f writes/s, revisions %d..%d",
		churn.Writes, churn.Updates, churn.Creates, churn.Deletes, churn.Txns, churn.LeasePuts, churn.Errors, churn.Rate, churn.StartRev, churn.LastRev)
	final := must(cli.Get(ctx, "/soak-probe")).Header.Revision

	// Nothing acknowledged is lost: the last write of the run gets stored, faults and all.
	caughtUp := time.Now()
	for {
		smu.Lock()
		s := stored
		smu.Unlock()
		if s >= final {
			break
		}
		if time.Since(caughtUp) > 2*time.Minute {
			t.Fatalf("the daemons stored revision %d, not the last of the run %d, within 2 minutes after the churn", s, final)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the last revision of the run (%d) was stored %s after the churn ended", final, time.Since(caughtUp).Round(100*time.Millisecond))
	stopSampler()
	samplerWG.Wait()
	sup.stop()
	injected := proxy.Injected()
	byOp := proxy.InjectedByOp()
	requests := proxy.Requests()

	// What the store holds: one history, no gap. The timeline and the restores read
	// versitygw directly unless ETCDGUARD_SOAK_RESTORE_FAULTS=1 keeps them behind the faults
	// (for when the store retries: without retries a restore fails on the first fault the
	// SDK does not retry).
	env, readURL := up.Env(), up.URL("soak")
	underFaults := os.Getenv("ETCDGUARD_SOAK_RESTORE_FAULTS") == "1"
	if underFaults {
		env, readURL = srv.Env(), storeURL
	} else {
		proxy.Set()
	}
	r := run(t, env, "timeline", "--store", readURL, "--cluster", "prod", "-o", "json")
	if r.code != 0 {
		t.Fatalf("timeline: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var tl struct {
		Spans      []delta.Span   `json:"spans"`
		Restorable []delta.Window `json:"restorable"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &tl); err != nil {
		t.Fatalf("timeline -o json: %v\n%s", err, r.stdout)
	}
	kinds := map[string]int{}
	for _, s := range tl.Spans {
		kinds[s.Kind]++
		if s.Kind == "gap" {
			t.Errorf("the timeline has a gap: revisions %d..%d: %s", s.FromRev, s.ToRev, s.Detail)
		}
	}
	if len(tl.Restorable) != 1 {
		t.Fatalf("restorable windows: %+v, want one", tl.Restorable)
	}
	w := tl.Restorable[0]
	t.Logf("timeline: %v spans; restorable revisions %d..%d", kinds, w.FirstRev, w.LastRev)
	if w.LastRev < final {
		t.Fatalf("restorable up to revision %d, but the run wrote up to %d", w.LastRev, final)
	}
	if w.FirstRev > churn.StartRev+churn.Writes/3 {
		t.Errorf("the restorable window starts at revision %d, late in a run that started at %d", w.FirstRev, churn.StartRev)
	}

	// restore --revision at random points spread over the window: one in each of
	// `restores` equal slices.
	var revs []int64
	span := w.LastRev - w.FirstRev + 1
	for i := range int64(restores) {
		lo := w.FirstRev + span*i/int64(restores)
		hi := w.FirstRev + span*(i+1)/int64(restores)
		revs = append(revs, lo+rng.Int63n(max(hi-lo, 1)))
	}
	restoreStart := time.Now()
	checked := 0
	for _, rev := range revs {
		if !t.Run(fmt.Sprintf("restore-%d", rev), func(t *testing.T) {
			soakRestoreEquals(t, env, readURL, cli, rev)
		}) {
			t.Errorf("restore --revision %d differs from etcd's get --rev", rev)
			continue
		}
		checked++
	}
	restoreTook := time.Since(restoreStart)
	restoreFaults := proxy.InjectedTotal() - sumFaults(injected)

	// The report.
	var b strings.Builder
	fmt.Fprintf(&b, "soak report (seed %d, %s, %.0f writes/s asked, %.1f achieved)\n", seed, dur, rate, churn.Rate)
	fmt.Fprintf(&b, "  etcd: 3 members, %d writes, revisions %d..%d, %d write errors\n", churn.Writes, churn.StartRev, final, churn.Errors)
	fmt.Fprintf(&b, "  daemons: 3; leader kills (-9): %d; restarts: %d (unexpected exits: %d); samples without a leader: %d\n",
		kills, sup.restarts, sup.unexpected, noLeader)
	fmt.Fprintf(&b, "  S3 requests through the proxy: %d; faults injected: %d\n", requests, sumFaults(injected))
	for _, f := range testharness.AllFaults {
		fmt.Fprintf(&b, "    %-13s %d\n", f, injected[f])
	}
	ops := make([]string, 0, len(byOp))
	for op := range byOp {
		ops = append(ops, string(op))
	}
	slices.Sort(ops)
	for _, op := range ops {
		fmt.Fprintf(&b, "    on %-24s %v\n", op, byOp[testharness.S3Op(op)])
	}
	smu.Lock()
	fmt.Fprintf(&b, "  write-to-stored lag (a revision's first sight to a daemon reporting it stored, %d samples): %s\n", len(e2eLag), durPercentiles(e2eLag))
	fmt.Fprintf(&b, "  etcdguard_delta_lag_seconds of the leader (%d samples): %s\n", len(gaugeLag), floatPercentiles(gaugeLag))
	smu.Unlock()
	fmt.Fprintf(&b, "  what the daemons logged at WARN and ERROR (count, message):\n%s", sup.complaints())
	fmt.Fprintf(&b, "  timeline: %v; restorable %d..%d\n", kinds, w.FirstRev, w.LastRev)
	fmt.Fprintf(&b, "  restore --revision checked key for key against etcd: %d of %d equal (%s)", checked, len(revs), restoreTook.Round(time.Second))
	if underFaults {
		fmt.Fprintf(&b, ", behind the faults: %d more injected into the timeline and restores", restoreFaults)
	}
	b.WriteString("\n")
	t.Log(b.String())
	fmt.Print(b.String())
	if path := os.Getenv("ETCDGUARD_SOAK_REPORT"); path != "" && !t.Failed() {
		doc := fmt.Sprintf("# Soak\n\nWritten by `make soak` (TestSoak, cmd/etcdguard/soak_test.go) on %s; do not edit.\n\n```\n%s```\n",
			time.Now().UTC().Format("2006-01-02"), b.String())
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Errorf("the soak report: %v", err)
		}
	}

	result := fmt.Sprintf("nothing lost: %d restores at random revisions over %s equal etcd's get --rev key for key; the last revision stored", checked, dur)
	for _, f := range testharness.AllFaults {
		testharness.RecordFault(t, testharness.FaultRow{Area: "daemon --delta (soak)", Fault: fmt.Sprintf("S3 %s (%.0f%% of requests faulted, every kind mixed)", f, faultRate*100),
			Tries: injected[f], Result: result})
	}
	testharness.RecordFault(t, testharness.FaultRow{Area: "daemon --delta (soak)", Fault: "kill -9 of the leader, restarted", Tries: kills, Result: result})
	if underFaults {
		testharness.RecordFault(t, testharness.FaultRow{Area: "restore --revision (soak)", Fault: fmt.Sprintf("S3 faults of every kind on %.0f%% of requests", faultRate*100),
			Tries: restoreFaults, Result: fmt.Sprintf("%d of %d restores equal etcd's get --rev key for key", checked, len(revs))})
	}
}

type revAt struct {
	at  time.Time
	rev int64
}

// soakRestoreEquals restores rev into a fresh member and compares it, key for key, with
// the source cluster's keyspace at rev.
func soakRestoreEquals(t *testing.T, env []string, storeURL string, src *clientv3.Client, rev int64) {
	ctx := context.Background()
	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "r.etcd")
	r := run(t, env, "restore", "--store", storeURL, "--cluster", "prod", "--revision", fmt.Sprint(rev),
		"--name", "r", "--initial-cluster", "r="+peer, "--data-dir", dataDir)
	if r.code != 0 {
		t.Fatalf("restore --revision %d: exit %d\n%s%s", rev, r.code, r.stdout, r.stderr)
	}
	p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
	defer os.RemoveAll(dataDir) // twenty restored copies of a long run add up
	defer p.Stop()
	if err := p.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := must(newClient(t, []string{p.Endpoint()}).Get(ctx, "", clientv3.WithFromKey()))
	want, err := src.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))
	if err != nil {
		t.Fatalf("source get --rev %d (was it compacted?): %v", rev, err)
	}
	if got.Header.Revision != rev {
		t.Fatalf("the restored member is at revision %d, want %d", got.Header.Revision, rev)
	}
	sameKeys(t, got.Kvs, want.Kvs)
	t.Logf("revision %d: %d keys equal", rev, len(got.Kvs))
}

// soakSupervisor runs the daemons and restarts any that exits, as a kubelet restarts a
// static pod.
type soakSupervisor struct {
	t    *testing.T
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu         sync.Mutex
	slots      []*soakSlot
	restarts   int
	unexpected int
}

type soakSlot struct {
	addr   string
	env    []string
	args   []string
	log    string
	cmd    *exec.Cmd
	killed bool // by the test: an expected exit
}

func (s *soakSupervisor) add(addr string, env []string, args ...string) {
	slot := &soakSlot{addr: addr, env: env, args: args, log: filepath.Join(s.t.TempDir(), "daemon.log")}
	s.mu.Lock()
	s.slots = append(s.slots, slot)
	s.mu.Unlock()
	s.wg.Go(func() { s.run(slot) })
}

func (s *soakSupervisor) addrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var a []string
	for _, sl := range s.slots {
		a = append(a, sl.addr)
	}
	return a
}

func (s *soakSupervisor) run(slot *soakSlot) {
	for first := true; ; first = false {
		logf, err := os.OpenFile(slot.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			s.t.Error(err)
			return
		}
		cmd := exec.Command(etcdguardBin, append([]string{"daemon", "--listen", slot.addr, "--log-format", "json"}, slot.args...)...)
		cmd.Env = append(slot.env, "PATH="+os.Getenv("PATH"), "HOME="+s.t.TempDir())
		cmd.Stdout, cmd.Stderr = logf, logf
		s.mu.Lock()
		select {
		case <-s.done:
			s.mu.Unlock()
			logf.Close()
			return
		default:
		}
		err = cmd.Start()
		slot.cmd, slot.killed = cmd, false
		if !first {
			s.restarts++
		}
		s.mu.Unlock()
		if err != nil {
			logf.Close()
			s.t.Errorf("starting daemon %s: %v", slot.addr, err)
			return
		}
		werr := cmd.Wait()
		logf.Close()
		s.mu.Lock()
		killed := slot.killed
		select {
		case <-s.done:
			s.mu.Unlock()
			return
		default:
		}
		if !killed {
			s.unexpected++
			s.t.Logf("daemon %s exited on its own: %v (see its log)", slot.addr, werr)
		}
		s.mu.Unlock()
		// A kubelet's first restart comes after about a second (then it backs off).
		select {
		case <-time.After(time.Second):
		case <-s.done:
			return
		}
	}
}

// killLeader sends SIGKILL to the daemon that says it leads, waiting up to timeout for
// one to say so.
func (s *soakSupervisor) killLeader(timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		s.mu.Lock()
		slots := slices.Clone(s.slots)
		s.mu.Unlock()
		for _, sl := range slots {
			if metric(sl.addr, "etcdguard_is_leader") != 1 {
				continue
			}
			s.mu.Lock()
			sl.killed = true
			cmd := sl.cmd
			s.mu.Unlock()
			cmd.Process.Signal(syscall.SIGKILL)
			s.t.Logf("%s: killed the leader %s (pid %d)", time.Now().UTC().Format(time.TimeOnly), sl.addr, cmd.Process.Pid)
			return true
		}
	}
	s.t.Logf("no daemon said it leads within %s: no kill this time", timeout)
	return false
}

// stop ends every daemon (SIGTERM, then SIGKILL) and the restarts.
func (s *soakSupervisor) stop() {
	s.once.Do(func() {
		s.mu.Lock()
		close(s.done)
		for _, sl := range s.slots {
			if sl.cmd != nil && sl.cmd.Process != nil {
				sl.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		s.mu.Unlock()
		waited := make(chan struct{})
		go func() { s.wg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			s.mu.Lock()
			for _, sl := range s.slots {
				if sl.cmd != nil && sl.cmd.Process != nil {
					sl.cmd.Process.Kill()
				}
			}
			s.mu.Unlock()
			<-waited
		}
		if s.t.Failed() {
			for _, sl := range s.slots {
				b, _ := os.ReadFile(sl.log)
				if len(b) > 20000 {
					b = b[len(b)-20000:]
				}
				s.t.Logf("daemon %s log (tail):\n%s", sl.addr, b)
			}
		}
	})
}

// complaints counts the daemons' WARN and ERROR log lines by message, most frequent first.
func (s *soakSupervisor) complaints() string {
	counts := map[string]int{}
	for _, sl := range s.slots {
		b, _ := os.ReadFile(sl.log)
		for _, line := range strings.Split(string(b), "\n") {
			var l struct{ Level, Msg string }
			if json.Unmarshal([]byte(line), &l) != nil || (l.Level != "WARN" && l.Level != "ERROR") {
				continue
			}
			counts[l.Level+" "+l.Msg]++
		}
	}
	keys := slices.Collect(maps.Keys(counts))
	slices.SortFunc(keys, func(a, b string) int { return counts[b] - counts[a] })
	var out strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&out, "    %5d  %s\n", counts[k], k)
	}
	if out.Len() == 0 {
		return "    none\n"
	}
	return out.String()
}

func soakEnv[T float64 | int | time.Duration](t *testing.T, name string, def T) T {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	var v any
	var err error
	switch any(def).(type) {
	case float64:
		v, err = strconv.ParseFloat(s, 64)
	case int:
		v, err = strconv.Atoi(s)
	case time.Duration:
		v, err = time.ParseDuration(s)
	}
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return v.(T)
}

func sumFaults(m map[testharness.Fault]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func durPercentiles(ds []time.Duration) string {
	fs := make([]float64, len(ds))
	for i, d := range ds {
		fs[i] = d.Seconds()
	}
	return floatPercentiles(fs)
}

// floatPercentiles formats p50, p90, p99 and max of seconds.
func floatPercentiles(v []float64) string {
	if len(v) == 0 {
		return "no samples"
	}
	s := slices.Clone(v)
	slices.Sort(s)
	at := func(p float64) float64 { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("p50 %.2fs, p90 %.2fs, p99 %.2fs, max %.2fs", at(0.50), at(0.90), at(0.99), s[len(s)-1])
}
