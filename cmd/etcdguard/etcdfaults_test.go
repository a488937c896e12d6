package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// etcdProxy forwards loopback TCP to one etcd member, passing on at most rate bytes/s of
// what the member sends, and counts those bytes. Throttled, a snapshot stream of a few MiB
// lasts long enough for a test to kill or stop the member in the middle of it, where it
// would otherwise be over in milliseconds; what the client sees of a killed or stopped
// member is unchanged (its connection is cut, or nothing more arrives).
type etcdProxy struct {
	URL  string
	rate atomic.Int64 // bytes/s from the member; 0: as fast as it comes
	down atomic.Int64 // bytes passed from the member to the client
	// paused holds what the member sends until cleared, so a test can act at a known
	// point of a stream however slow the machine is.
	paused atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
}

func startProxy(t *testing.T, target string, rate int64) *etcdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &etcdProxy{URL: "http://" + ln.Addr().String()}
	p.rate.Store(rate)
	host := strings.TrimPrefix(target, "http://")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c, host)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *etcdProxy) serve(c net.Conn, target string) {
	u, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	closeBoth := func() { c.Close(); u.Close() }
	go func() {
		io.Copy(u, c)
		closeBoth()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, err := u.Read(buf)
		for p.paused.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
			p.down.Add(int64(n))
			if r := p.rate.Load(); r > 0 {
				time.Sleep(time.Duration(int64(n) * int64(time.Second) / r))
			}
		}
		if err != nil {
			break
		}
	}
	closeBoth()
}

// proxies puts a proxy in front of every member of c, in member order.
func proxies(t *testing.T, c *testharness.EtcdCluster, rate int64) ([]*etcdProxy, []string) {
	var ps []*etcdProxy
	var urls []string
	for _, ep := range c.Endpoints() {
		p := startProxy(t, ep, rate)
		ps, urls = append(ps, p), append(urls, p.URL)
	}
	return ps, urls
}

// bgRun is an etcdguard process running in the background.
type bgRun struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	started        time.Time
	took           time.Duration
	res            result
}

func startBG(t *testing.T, env []string, args ...string) *bgRun {
	t.Helper()
	b := &bgRun{cmd: exec.Command(etcdguardBin, args...), done: make(chan struct{})}
	b.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "AWS_EC2_METADATA_DISABLED=true"}, env...)
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	b.started = time.Now()
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := b.cmd.Wait()
		b.took = time.Since(b.started)
		b.res = result{b.stdout.String(), b.stderr.String(), 0}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			b.res.code = ee.ExitCode()
		} else if err != nil {
			b.res.code = -1
		}
		close(b.done)
	}()
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

// wait returns the process's result, failing the test (and killing it) if it has not
// ended within limit: a command that waits on a dead or stalled member forever is the bug.
func (b *bgRun) wait(t *testing.T, limit time.Duration) result {
	t.Helper()
	select {
	case <-b.done:
		return b.res
	case <-time.After(limit - time.Since(b.started)):
		b.cmd.Process.Signal(syscall.SIGQUIT) // its goroutine dump shows where it hangs
		time.Sleep(500 * time.Millisecond)
		b.cmd.Process.Kill()
		<-b.done
		out := b.stderr.String()
		if i := strings.Index(out, "SIGQUIT"); i >= 0 && len(out) > i+4000 {
			out = out[:i+4000] // the main goroutine's stack, where it waits
		}
		t.Fatalf("%v still running after %s: it waits forever\nstderr:\n%s", b.cmd.Args[1:], limit, out)
		return result{}
	}
}

// waitFor polls cond every 10 ms until it holds, failing after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not after %s", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// storeFiles lists every file under dir (relative paths), for "nothing partial" checks.
func storeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// snapshotObjects are the snapshot data objects and manifests in a file:// store, and
// anything that looks like an upload in progress.
func snapshotObjects(t *testing.T, dir string) []string {
	var out []string
	for _, f := range storeFiles(t, dir) {
		if strings.Contains(f, "/snapshots/") || strings.Contains(f, ".tmp-") {
			out = append(out, f)
		}
	}
	return out
}

func listSnapshots(t *testing.T, dir, cluster string) []*snapshot.Manifest {
	t.Helper()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := snapshot.List(context.Background(), st, cluster)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// loadCluster writes about size bytes of Kubernetes-like keys, so a snapshot streams for
// size/rate seconds through a throttled proxy.
func loadCluster(t *testing.T, cli *clientv3.Client, size int64) {
	t.Helper()
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), cli, loadgen.Options{TargetBytes: size, ValueSize: 16 << 10, Seed: 15}); err != nil {
		t.Fatal(err)
	}
}

const (
	faultRate = 3 << 20 // bytes/s through a throttled proxy
	faultLoad = 5 << 20 // bytes of keys: a snapshot of about 6 MiB streams for 2 s
)

// A member killed (SIGKILL) while the save streams from it: the save fails with one line
// that names the member and says what to do, stores nothing, and the next save uses a
// healthy member. Then the daemon: the member it streams from is killed, and its next
// scheduled run succeeds from another member.
func TestEtcdFaultMemberKilledDuringSave(t *testing.T) {
	c := testharness.StartEtcdCluster(t, 3)
	loadCluster(t, c.Client(t), faultLoad)
	ps, urls := proxies(t, c, faultRate)
	dir := t.TempDir()
	env := []string{"ETCDGUARD_ENDPOINTS=" + strings.Join(urls, ","), "ETCDGUARD_STORE=file://" + dir, "ETCDGUARD_CLUSTER=prod", "ETCDGUARD_DIAL_TIMEOUT=2s"}

	save := startBG(t, env, "snapshot", "save", "-o", "json")
	waitFor(t, 20*time.Second, "the save to stream 1 MiB from m0", func() bool { return ps[0].down.Load() > 1<<20 })
	c.Kill(0)
	r := save.wait(t, 20*time.Second)
	line := r.errorLine(t)
	if r.code == 0 || !strings.Contains(line, urls[0]) || !strings.Contains(line, "run the save again") {
		t.Fatalf("save whose member was killed: exit %d, %q (want non-zero, naming %s and what to do)", r.code, line, urls[0])
	}
	t.Logf("killed member: save failed after %s: %s", save.took.Round(time.Millisecond), line)
	if ms := listSnapshots(t, dir, "prod"); len(ms) != 0 {
		t.Fatalf("a failed save is listed: %+v", ms)
	}
	if objs := snapshotObjects(t, dir); len(objs) != 0 {
		t.Fatalf("a failed save left %v in the store", objs)
	}

	// The next attempt skips the dead member.
	r = run(t, env, "snapshot", "save", "-o", "json")
	m := decodeJSON[snapshot.Manifest](t, r)
	if m.Endpoint != urls[1] {
		t.Fatalf("the next save used %s, want the first healthy member %s", m.Endpoint, urls[1])
	}
	if rep := decodeJSON[snapshot.VerifyReport](t, run(t, env, "snapshot", "verify", m.ID, "-o", "json")); !rep.OK {
		t.Fatalf("verify: %+v", rep)
	}
	testharness.RecordFault(t, testharness.FaultRow{Area: "snapshot save", Fault: "the etcd member it streams from killed (SIGKILL) mid-stream", Tries: 1,
		Result: "nothing lost; the save exits non-zero naming the member, lists and stores nothing; the next save uses a healthy member and verifies"})

	// The daemon: m0 back, then killed while the daemon streams from it.
	c.Members[0].Restart(t)
	if err := c.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	ddir := t.TempDir()
	denv := []string{"ETCDGUARD_ENDPOINTS=" + strings.Join(urls, ","), "ETCDGUARD_STORE=file://" + ddir, "ETCDGUARD_CLUSTER=prod", "ETCDGUARD_DIAL_TIMEOUT=2s"}
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	d := startDaemon(t, denv, addr, "--schedule", "@every 1s", "--keep-last", "100")
	before := ps[0].down.Load()
	waitFor(t, 30*time.Second, "the daemon to stream 1 MiB from m0", func() bool { return ps[0].down.Load()-before > 1<<20 })
	killed := time.Now()
	c.Kill(0)
	waitFor(t, 30*time.Second, "a daemon snapshot from another member after the kill", func() bool {
		for _, m := range listSnapshots(t, ddir, "prod") {
			if m.CreatedAt.After(killed) {
				return true
			}
		}
		return false
	})
	for _, m := range listSnapshots(t, ddir, "prod") {
		if m.CreatedAt.After(killed) && m.Endpoint == urls[0] {
			t.Fatalf("snapshot %s after the kill claims the killed member %s", m.ID, m.Endpoint)
		}
		if m.Endpoint == urls[0] && m.CreatedAt.Before(killed) && m.CompletedAt.After(killed) {
			t.Fatalf("snapshot %s completed from m0 after m0 was killed", m.ID)
		}
	}
	// Stopped (SIGTERM lets a running save finish or clean up), the store holds only
	// complete snapshots: nothing the interrupted run wrote is left.
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
	named := map[string]bool{}
	for _, m := range listSnapshots(t, ddir, "prod") {
		named[m.Object] = true
	}
	for _, f := range snapshotObjects(t, ddir) {
		if !strings.HasSuffix(f, ".json") && !named[f] {
			t.Fatalf("%s is in the store but no manifest names it: the interrupted run left it", f)
		}
	}
	t.Logf("daemon: next good snapshot %s after the kill", time.Since(killed).Round(time.Millisecond))
	testharness.RecordFault(t, testharness.FaultRow{Area: "daemon", Fault: "the etcd member its save streams from killed (SIGKILL) mid-stream", Tries: 1,
		Result: "nothing lost; the interrupted run stores nothing, the next scheduled run snapshots a healthy member"})
}

// stopMember freezes member i (SIGSTOP) until the test ends: it keeps its sockets and
// answers nothing, like a member stuck on a dead disk.
func stopMember(t *testing.T, c *testharness.EtcdCluster, i int) (resume func()) {
	t.Helper()
	pid := c.Members[i].PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume) // a stopped member would hang the harness's SIGTERM for its grace
	return resume
}

// A member that stalls (SIGSTOP) mid-save: the save notices within --command-timeout
// that nothing arrives, fails naming the member, and stores nothing. A member stalled
// before a save starts is skipped within --dial-timeout; if it is the only endpoint, the
// save fails within --dial-timeout naming it. Nothing waits on a stalled member forever.
func TestEtcdFaultMemberStallsDuringSave(t *testing.T) {
	c := testharness.StartEtcdCluster(t, 3)
	loadCluster(t, c.Client(t), faultLoad)
	ps, urls := proxies(t, c, faultRate)
	dir := t.TempDir()
	const dial, command = 2 * time.Second, 3 * time.Second
	env := []string{"ETCDGUARD_ENDPOINTS=" + strings.Join(urls, ","), "ETCDGUARD_STORE=file://" + dir, "ETCDGUARD_CLUSTER=prod",
		"ETCDGUARD_DIAL_TIMEOUT=" + dial.String(), "ETCDGUARD_COMMAND_TIMEOUT=" + command.String()}
	// What the timeouts promise: a stalled stream is given up after --command-timeout
	// without a byte; the rest is process start, the clean-up, and a loaded machine.
	const slack = 10 * time.Second

	save := startBG(t, env, "snapshot", "save", "-o", "json")
	waitFor(t, 20*time.Second, "the save to stream 1 MiB from m0", func() bool { return ps[0].down.Load() > 1<<20 })
	stalled := time.Now()
	resume := stopMember(t, c, 0)
	r := save.wait(t, time.Since(save.started)+command+slack)
	line := r.errorLine(t)
	if r.code == 0 || !strings.Contains(line, urls[0]) || !strings.Contains(line, "stalled") {
		t.Fatalf("save from a member that stalled: exit %d, %q (want non-zero, naming %s as stalled)", r.code, line, urls[0])
	}
	t.Logf("stalled mid-stream: the save gave up %s after the stall: %s", time.Since(stalled).Round(time.Millisecond), line)
	if ms := listSnapshots(t, dir, "prod"); len(ms) != 0 {
		t.Fatalf("a failed save is listed: %+v", ms)
	}
	if objs := snapshotObjects(t, dir); len(objs) != 0 {
		t.Fatalf("a failed save left %v in the store", objs)
	}
	testharness.RecordFault(t, testharness.FaultRow{Area: "snapshot save", Fault: "the etcd member it streams from stalls (SIGSTOP) mid-stream", Tries: 1,
		Result: "nothing lost; the save gives up within --command-timeout of silence, exits non-zero naming the stalled member, stores nothing"})

	// Still stalled when the next save starts: skipped for the next member.
	ps[0].rate.Store(0)
	ps[1].rate.Store(0)
	start := time.Now()
	r = startBG(t, env, "snapshot", "save", "-o", "json").wait(t, dial+command+slack)
	m := decodeJSON[snapshot.Manifest](t, r)
	if m.Endpoint != urls[1] {
		t.Fatalf("save with m0 stalled used %s, want %s", m.Endpoint, urls[1])
	}
	t.Logf("stalled before the save: snapshot from m1 in %s", time.Since(start).Round(time.Millisecond))
	// The stalled member alone: refused within the dial timeout, naming it.
	start = time.Now()
	r = startBG(t, append(env, "ETCDGUARD_ENDPOINTS="+urls[0]), "snapshot", "save").wait(t, dial+slack)
	if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, urls[0]) || !strings.Contains(line, "does not answer") {
		t.Fatalf("save from the stalled member alone: exit %d, %q", r.code, line)
	}
	t.Logf("stalled member alone: refused in %s", time.Since(start).Round(time.Millisecond))
	resume()
	if ms := listSnapshots(t, dir, "prod"); len(ms) != 1 || ms[0].ID != m.ID {
		t.Fatalf("list: %+v", ms)
	}
	testharness.RecordFault(t, testharness.FaultRow{Area: "snapshot save", Fault: "an etcd member stalled (SIGSTOP) before the save starts", Tries: 2,
		Result: "nothing lost; skipped within --dial-timeout for the next endpoint; alone, refused within --dial-timeout naming it"})

	// The daemon: a run stuck on a stalled member would hold its lock, and every later tick
	// would be skipped ("the previous snapshot is still running"): no backups, silently.
	if err := c.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	ps[0].rate.Store(faultRate)
	ddir := t.TempDir()
	denv := append(slices.Clone(env), "ETCDGUARD_STORE=file://"+ddir)
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	const ttl = 5 * time.Second
	startDaemon(t, denv, addr, "--schedule", "@every 1s", "--keep-last", "100", "--election-ttl", ttl.String())
	before := ps[0].down.Load()
	waitFor(t, 30*time.Second, "the daemon to stream 1 MiB from m0", func() bool { return ps[0].down.Load()-before > 1<<20 })
	stalled = time.Now()
	stopMember(t, c, 0)
	// The daemon's election session may be on m0 too: then its lease goes, the run is
	// fenced off, and it is elected again (within the TTL) before the next run.
	waitFor(t, command+dial+ttl+slack, "a daemon snapshot after m0 stalled", func() bool {
		for _, m := range listSnapshots(t, ddir, "prod") {
			if m.CreatedAt.After(stalled) {
				return true
			}
		}
		return false
	})
	t.Logf("daemon: next good snapshot %s after m0 stalled", time.Since(stalled).Round(time.Millisecond))
	testharness.RecordFault(t, testharness.FaultRow{Area: "daemon", Fault: "the etcd member its save streams from stalls (SIGSTOP) mid-stream", Tries: 1,
		Result: "nothing lost; the run gives up within --command-timeout, the next scheduled run snapshots a healthy member"})
}

type planOut struct {
	PlanID   string `json:"plan_id"`
	KeyCount int64  `json:"key_count"`
}

// putKeys writes n keys of about 2 KiB under prefix.
func putKeys(t *testing.T, cli *clientv3.Client, prefix string, n int) {
	t.Helper()
	val := strings.Repeat("v", 2<<10)
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%05d", prefix, j), val))
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

func countKeys(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// A member stopped (SIGTERM) while `del --confirm` reads, saves and deletes through it:
// the delete is all or nothing. Either the confirm deleted every planned key (and undo
// puts every one back: what was saved is what was deleted), or it deleted none and a
// second confirm, with the member still down, deletes them all. The fault comes early
// (16 KiB into the confirm's read) and late (2 MiB: near the save and the delete).
func TestEtcdFaultMemberStoppedDuringConfirm(t *testing.T) {
	confirmUnderFault(t, "stopped (SIGTERM)", []int64{16 << 10, 2 << 20}, func(c *testharness.EtcdCluster, i int) (undo func()) {
		c.Stop(i)
		return func() { c.Members[i].Restart(t) }
	})
}

// The same with a member that stalls (SIGSTOP) mid-confirm: no confirm waits on it
// forever. The connection to it is dropped when a keepalive ping (sent after 10 s of
// silence) goes unanswered for --command-timeout. Once, 1 MiB into the read: each try
// costs grpc's 10 s before the first ping.
func TestEtcdFaultMemberStallsDuringConfirm(t *testing.T) {
	confirmUnderFault(t, "stalled (SIGSTOP)", []int64{1 << 20}, func(c *testharness.EtcdCluster, i int) (undo func()) {
		return stopMember(t, c, i)
	})
}

func confirmUnderFault(t *testing.T, fault string, at []int64, inject func(c *testharness.EtcdCluster, i int) (undo func())) {
	c := testharness.StartEtcdCluster(t, 3)
	cli := c.Client(t)
	ps, urls := proxies(t, c, 0)
	env := []string{"ETCDGUARD_ENDPOINTS=" + strings.Join(urls, ","), "ETCDGUARD_STORE=file://" + t.TempDir(), "ETCDGUARD_CLUSTER=prod",
		"ETCDGUARD_DIAL_TIMEOUT=2s", "ETCDGUARD_COMMAND_TIMEOUT=3s", "ETCDGUARD_LOG_LEVEL=warn"}
	const n = 1500 // about 3 MiB: a second's read through the throttled proxies
	outcomes := map[string]int{}
	for try, stopAfter := range at {
		prefix := fmt.Sprintf("/registry/pods/try%d/", try)
		putKeys(t, cli, prefix, n)
		for _, p := range ps {
			p.rate.Store(0)
		}
		p := decodeJSON[planOut](t, run(t, env, "del", prefix, "--prefix", "--dry-run", "--max-keys", "10000", "-o", "json"))
		if p.KeyCount != n {
			t.Fatalf("plan: %+v", p)
		}
		base := make([]int64, len(ps))
		for i, p := range ps {
			base[i] = p.down.Load()
			p.rate.Store(faultRate)
		}
		confirm := startBG(t, env, "del", "--confirm", p.PlanID, "-o", "json")
		grown := func() (sum int64, most int) {
			var top int64
			for i, p := range ps {
				d := p.down.Load() - base[i]
				sum += d
				if d > top {
					top, most = d, i
				}
			}
			return sum, most
		}
		waitFor(t, 20*time.Second, "the confirm to read through a member", func() bool { s, _ := grown(); return s > stopAfter })
		_, victim := grown()
		undo := inject(c, victim)
		r := confirm.wait(t, 10*time.Second+3*time.Second+15*time.Second) // ping after 10 s, --command-timeout, slack
		for _, p := range ps {
			p.rate.Store(0)
		}
		// The test's own client keeps away from the victim: a stalled member would hang it.
		var healthy []string
		for i, ep := range c.Endpoints() {
			if i != victim {
				healthy = append(healthy, ep)
			}
		}
		hcli := c.Client(t, func(cc *clientv3.Config) { cc.Endpoints = healthy })
		left := countKeys(t, hcli, prefix)
		t.Logf("try %d: m%d %s after %d KiB; confirm exit %d in %s; %d of %d keys left; %s", try, victim, fault, stopAfter>>10, r.code,
			confirm.took.Round(time.Millisecond), left, n, strings.TrimSpace(r.stderr))
		switch {
		case left == n && r.code != 0:
			outcomes["none deleted"]++
			// Nothing deleted: confirming again, the member still down, deletes them all.
			if r := run(t, env, "del", "--confirm", p.PlanID); r.code != 0 {
				t.Fatalf("second confirm with m%d %s: exit %d %s", victim, fault, r.code, r.stderr)
			}
			if left := countKeys(t, hcli, prefix); left != 0 {
				t.Fatalf("second confirm left %d keys", left)
			}
		case left == 0:
			outcomes["all deleted"]++
		default:
			t.Fatalf("partial delete: %d of %d keys left (confirm exit %d: %s)", left, n, r.code, r.stderr)
		}
		if r := run(t, env, "guard", "undo", p.PlanID); r.code != 0 || countKeys(t, hcli, prefix) != n {
			t.Fatalf("undo: exit %d %s%s; %d keys of %d back", r.code, r.stdout, r.stderr, countKeys(t, hcli, prefix), n)
		}
		undo()
		if err := c.WaitHealthy(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("outcomes: %v", outcomes)
	testharness.RecordFault(t, testharness.FaultRow{Area: "del --confirm", Fault: "the etcd member it reads through " + fault + " mid-confirm", Tries: len(at),
		Result: "nothing lost; all or none of the planned keys deleted, never part; undo puts back exactly what was deleted"})
}

// A member stalled (SIGSTOP) before a guarded delete starts: planning and confirming go
// through the healthy members (the client spreads requests over every endpoint, so a
// request sent to the stalled one must be given up and sent elsewhere, not waited on).
func TestEtcdFaultMemberStalledBeforeDel(t *testing.T) {
	c := testharness.StartEtcdCluster(t, 3)
	cli := c.Client(t)
	const n = 200
	prefix := "/registry/pods/stall/"
	putKeys(t, cli, prefix, n)
	env := []string{"ETCDGUARD_ENDPOINTS=" + strings.Join(c.Endpoints(), ","), "ETCDGUARD_STORE=file://" + t.TempDir(), "ETCDGUARD_CLUSTER=prod",
		"ETCDGUARD_DIAL_TIMEOUT=2s", "ETCDGUARD_COMMAND_TIMEOUT=3s", "ETCDGUARD_LOG_LEVEL=warn"}
	const bound = 30 * time.Second
	for i := range 1 { // the first endpoint
		stopMember(t, c, i)
		start := time.Now()
		r := startBG(t, env, "del", prefix, "--prefix", "--dry-run", "-o", "json").wait(t, bound)
		p := decodeJSON[planOut](t, r)
		r = startBG(t, env, "del", "--confirm", p.PlanID).wait(t, bound)
		if r.code != 0 || countKeys(t, c.Client(t, func(cc *clientv3.Config) { cc.Endpoints = []string{c.Endpoints()[2]} }), prefix) != 0 {
			t.Fatalf("confirm with m%d stalled: exit %d %s", i, r.code, r.stderr)
		}
		r = startBG(t, env, "guard", "undo", p.PlanID).wait(t, bound)
		if r.code != 0 {
			t.Fatalf("undo with m%d stalled: exit %d %s", i, r.code, r.stderr)
		}
		t.Logf("m%d stalled: plan, confirm and undo in %s", i, time.Since(start).Round(time.Millisecond))
		syscall.Kill(c.Members[i].PID(), syscall.SIGCONT)
		if err := c.WaitHealthy(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
}
