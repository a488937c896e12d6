package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	s3store "github.com/etcdguard/etcdguard/store/s3"
)

// metric reads one series' value from a daemon's /metrics (-1 if unreachable or absent).
func metric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && strings.HasPrefix(f[0], name+"{") {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// Two daemons against a 3-member etcd and a real S3 server: one snapshot per tick, a
// killed leader replaced within the election TTL, and a clean SIGTERM.
func TestE2EDaemons(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	etcd := testharness.StartEtcdCluster(t, 3)
	ports := testharness.FreePorts(t, 2)
	st := s3store.NewFromClient(srv.Client(t), srv.Bucket, "fleet", srv.Options())
	const ttl = 3 * time.Second
	var daemons []*exec.Cmd
	var addrs []string
	for i := range 2 {
		addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
		eps := append([]string{etcd.Endpoints()[i]}, etcd.Endpoints()...) // its local member first
		cmd := exec.Command(etcdguardBin, "daemon", "--cluster", "prod", "--store", srv.URL("fleet"), "--endpoints", strings.Join(eps, ","),
			"--schedule", "@every 2s", "--election-ttl", ttl.String(), "--listen", addr, "--check-interval", "1s",
			"--keep-last", "1000", "--verify", "--log-format", "json")
		cmd.Env = append(srv.Env(), "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
		logf, _ := os.Create(filepath.Join(t.TempDir(), "daemon.log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				logf.Seek(0, io.SeekStart)
				b, _ := io.ReadAll(logf)
				t.Logf("daemon %d log:\n%s", i, b)
			}
		})
		daemons, addrs = append(daemons, cmd), append(addrs, addr)
	}
	list := func() []*snapshot.Manifest {
		ms, err := snapshot.List(context.Background(), st, "prod")
		if err != nil {
			t.Fatal(err)
		}
		return ms
	}
	time.Sleep(9 * time.Second)
	ms := list()
	if len(ms) < 3 {
		t.Fatalf("%d snapshots after 9s of @every 2s", len(ms))
	}
	for i := 1; i < len(ms); i++ {
		if gap := ms[i-1].CreatedAt.Sub(ms[i].CreatedAt); gap < time.Second {
			t.Fatalf("two snapshots %s apart: both daemons uploaded on one tick (%s, %s)", gap, ms[i].ID, ms[i-1].ID)
		}
	}
	leader := -1
	for i, a := range addrs {
		if metric(a, "etcdguard_is_leader") == 1 {
			if leader >= 0 {
				t.Fatal("two daemons say they lead")
			}
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no daemon leads")
	}
	other := 1 - leader
	if v := metric(addrs[other], "etcdguard_snapshot_last_success_timestamp_seconds"); v < float64(ms[len(ms)-1].CreatedAt.Unix()) {
		t.Errorf("the follower's last success metric is %v: every node should watch freshness", v)
	}

	// kill -9 the leader: its lease expires and the other daemon takes over.
	killed := time.Now()
	daemons[leader].Process.Signal(syscall.SIGKILL)
	daemons[leader].Wait()
	deadline := killed.Add(ttl + 3*2*time.Second + 2*time.Second)
	for {
		if ms := list(); ms[0].CreatedAt.After(killed.Add(time.Second)) {
			t.Logf("a new leader uploaded %s after the kill", ms[0].CreatedAt.Sub(killed).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot within %s of killing the leader", deadline.Sub(killed))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if metric(addrs[other], "etcdguard_is_leader") != 1 {
		t.Error("the surviving daemon does not report leadership")
	}

	// SIGTERM: exits promptly and cleanly, nothing partial listed, no open upload.
	start := time.Now()
	daemons[other].Process.Signal(syscall.SIGTERM)
	if err := daemons[other].Wait(); err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("SIGTERM took %s", d)
	}
	if open := srv.OpenUploads(t); len(open) != 0 {
		t.Fatalf("open uploads after SIGTERM: %v", open)
	}
	for _, m := range list() {
		if _, err := st.Stat(context.Background(), m.Object); err != nil {
			t.Fatalf("listed snapshot %s has no data: %v", m.ID, err)
		}
	}
}

// SIGTERM while a snapshot is uploading: the daemon exits in time, the upload is aborted
// (no open multipart upload) and nothing partial is listed.
func TestE2EDaemonSIGTERMDuringUpload(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	e := testharness.StartEtcd(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), e.Client(t), loadgen.Options{TargetBytes: 64 << 20, ValueSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	st := s3store.NewFromClient(srv.Client(t), srv.Bucket, "", srv.Options())
	cmd := exec.Command(etcdguardBin, "daemon", "--cluster", "prod", "--store", srv.URL(""), "--endpoints", e.Endpoints[0],
		"--schedule", "@every 1s", "--election-ttl", "2s", "--listen", "", "--compression", "none",
		"--s3-part-size", "5MiB", "--s3-concurrency", "1")
	cmd.Env = append(srv.Env(), "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for len(srv.OpenUploads(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no upload started within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("SIGTERM took %s", d)
	}
	if open := srv.OpenUploads(t); len(open) != 0 {
		t.Fatalf("SIGTERM left open uploads: %v", open)
	}
	ms, err := snapshot.List(context.Background(), st, "prod")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms { // snapshots finished before the signal are fine; each must be whole
		if info, err := st.Stat(context.Background(), m.Object); err != nil || info.Size != m.StoredSize {
			t.Fatalf("listed snapshot %s is not whole: %v %v", m.ID, info, err)
		}
	}
}

// A daemon started before its bucket exists runs anyway: it serves /metrics with
// etcdguard_store_up 0 (so EtcdguardStoreUnreachable can fire) and starts backing up
// once the bucket is there, without a restart. Settings no retry can fix still stop it.
func TestE2EDaemonStartsBeforeItsStore(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	e := testharness.StartEtcd(t)
	later := *srv
	later.Bucket = "created-later"
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	args := []string{"daemon", "--cluster", "prod", "--store", later.URL(""), "--endpoints", e.Endpoints[0],
		"--schedule", "@every 1s", "--election-ttl", "2s", "--listen", addr, "--check-interval", "500ms", "--store-timeout", "5s"}
	env := append(srv.Env(), "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())

	t.Run("invalid settings exit", func(t *testing.T) {
		r := run(t, env, append(args, "--s3-sse", "bogus")...)
		if r.code == 0 || !strings.Contains(r.stderr, `unknown --s3-sse "bogus"`) {
			t.Fatalf("exit %d, stderr %q: want a non-zero exit naming --s3-sse", r.code, r.stderr)
		}
	})

	cmd := exec.Command(etcdguardBin, args...)
	cmd.Env = env
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	log := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("daemon log:\n%s", log())
		}
	})
	waitMetric := func(name string, want float64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for metric(addr, name) != want {
			select {
			case <-exited:
				t.Fatalf("the daemon exited (%v) instead of waiting for its store", exitErr)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is %v after 20s, want %v", name, metric(addr, name), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitMetric("etcdguard_store_up", 0)
	waitMetric("etcdguard_is_leader", 1)
	time.Sleep(2 * time.Second) // scheduled runs fail while the bucket is missing
	if n := metric(addr, "etcdguard_snapshot_failures_in_a_row"); n < 1 {
		t.Errorf("etcdguard_snapshot_failures_in_a_row is %v with no bucket, want runs counted as failed", n)
	}
	if l := log(); !strings.Contains(l, "cannot open the store") || !strings.Contains(l, "created-later") {
		t.Errorf("the log does not say which store cannot be opened")
	}

	if _, err := srv.Client(t).CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(later.Bucket)}); err != nil {
		t.Fatal(err)
	}
	waitMetric("etcdguard_store_up", 1)
	waitMetric("etcdguard_snapshot_failures_in_a_row", 0)
	ms, err := snapshot.List(context.Background(), s3store.NewFromClient(srv.Client(t), later.Bucket, "", srv.Options()), "prod")
	if err != nil || len(ms) == 0 {
		t.Fatalf("no snapshot in the bucket once it exists: %d, %v", len(ms), err)
	}
}
