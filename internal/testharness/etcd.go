package testharness

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

const (
	startAttempts = 5
	readyTimeout  = 30 * time.Second
	stopGrace     = 5 * time.Second
)

// Etcd is a single-member etcd running inside the test process.
type Etcd struct {
	Endpoints []string
	DataDir   string
	Server    *embed.Etcd
	LogPath   string
}

// StartEtcd starts an in-process etcd on loopback with its data in a temp
// dir. opts run last, so a test can override anything (quota, auth, TLS).
// fsync is off by default: tests never lose power, and it makes writes an
// order of magnitude faster on slow disks.
func StartEtcd(t testing.TB, opts ...func(*embed.Config)) *Etcd {
	t.Helper()
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	logPath := filepath.Join(dir, "etcd.log")
	var lastErr error
	for range startAttempts {
		ports := FreePorts(t, 2)
		cfg := embed.NewConfig()
		cfg.Name = "default"
		cfg.Dir = dataDir
		curl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
		purl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		cfg.InitialClusterToken = "etcdguard-test-" + randHex(4)
		// A file rather than stderr keeps test output clean; its tail is
		// printed if the test fails.
		cfg.LogLevel = "warn"
		cfg.LogOutputs = []string{logPath}
		cfg.UnsafeNoFsync = true
		for _, o := range opts {
			o(cfg)
		}

		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			if isAddrInUse(err) {
				// Another test took the port between reservation and bind.
				os.RemoveAll(dataDir)
				continue
			}
			t.Fatalf("start embedded etcd: %v\n%s", err, tail(logPath))
		}
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			e.Close()
			t.Fatalf("embedded etcd failed: %v\n%s", err, tail(logPath))
		case <-time.After(readyTimeout):
			e.Server.Stop()
			e.Close()
			t.Fatalf("embedded etcd not ready after %v\n%s", readyTimeout, tail(logPath))
		}
		t.Cleanup(func() {
			e.Close()
			if t.Failed() {
				t.Logf("embedded etcd log tail:\n%s", tail(logPath))
			}
		})
		eps := make([]string, len(cfg.AdvertiseClientUrls))
		for i, u := range cfg.AdvertiseClientUrls {
			eps[i] = u.String()
		}
		return &Etcd{Endpoints: eps, DataDir: dataDir, Server: e, LogPath: logPath}
	}
	t.Fatalf("start embedded etcd: no free ports after %d attempts: %v", startAttempts, lastErr)
	return nil
}

// Client returns a client for the embedded etcd, closed when the test ends.
func (e *Etcd) Client(t testing.TB, opts ...func(*clientv3.Config)) *clientv3.Client {
	t.Helper()
	return newClient(t, e.Endpoints, opts)
}

// ProcConfig describes one etcd process. Only DataDir, ClientURL and PeerURL
// are required; the data dir may already hold a member (e.g. one written by
// a restore), in which case etcd ignores the initial-cluster settings.
type ProcConfig struct {
	Name                string
	DataDir             string
	ClientURL           string // also advertised
	PeerURL             string // also advertised
	InitialCluster      string // default Name=PeerURL
	InitialClusterToken string // default a fresh random token
	InitialClusterState string // default "new"
	ExtraArgs           []string
	Binary              string // default bin/etcd; set to run another etcd version
}

// EtcdProc is a running (or stopped) etcd process.
type EtcdProc struct {
	ProcConfig
	LogPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

var errAddrInUse = errors.New("address already in use")

// StartEtcdProc starts one etcd process and waits until its client port
// accepts connections. It does not wait for health: a member of a
// multi-member cluster has no leader until a quorum is up, so callers start
// every member and then call WaitHealthy.
func StartEtcdProc(t testing.TB, cfg ProcConfig) *EtcdProc {
	t.Helper()
	p := newProc(t, cfg)
	if err := p.start(); err != nil {
		t.Fatalf("start etcd %s: %v", p.Name, err) // the cleanup prints the log tail
	}
	return p
}

func newProc(t testing.TB, cfg ProcConfig) *EtcdProc {
	t.Helper()
	if cfg.Binary == "" {
		cfg.Binary = Bin(t, "etcd")
	}
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	if cfg.InitialClusterToken == "" {
		cfg.InitialClusterToken = "etcdguard-test-" + randHex(4)
	}
	if cfg.InitialClusterState == "" {
		cfg.InitialClusterState = "new"
	}
	p := &EtcdProc{ProcConfig: cfg, LogPath: filepath.Join(t.TempDir(), cfg.Name+".log")}
	// Registered after t.TempDir, so it runs before the log dir is removed.
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("etcd %s (%s) log tail:\n%s", p.Name, p.ClientURL, tail(p.LogPath))
		}
	})
	return p
}

func (p *EtcdProc) start() error {
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := []string{
		"--name", p.Name,
		"--data-dir", p.DataDir,
		"--listen-client-urls", p.ClientURL,
		"--advertise-client-urls", p.ClientURL,
		"--listen-peer-urls", p.PeerURL,
		"--initial-advertise-peer-urls", p.PeerURL,
		"--initial-cluster", p.InitialCluster,
		"--initial-cluster-token", p.InitialClusterToken,
		"--initial-cluster-state", p.InitialClusterState,
		"--log-level", "warn",
		// See StartEtcd; ExtraArgs can turn it back on (the last flag wins).
		"--unsafe-no-fsync",
	}
	cmd := exec.Command(p.Binary, append(args, p.ExtraArgs...)...)
	cmd.SysProcAttr = killWithParent()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.waitErr = cmd, done, nil
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()

	host := hostOf(p.ClientURL)
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-done:
			if strings.Contains(tail(p.LogPath), "address already in use") {
				return errAddrInUse
			}
			return fmt.Errorf("etcd exited: %v", p.exitErr())
		default:
		}
		if c, err := net.DialTimeout("tcp", host, time.Second); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			p.Stop()
			return fmt.Errorf("client port %s not listening after %v", host, readyTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *EtcdProc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// Endpoint is the member's client URL.
func (p *EtcdProc) Endpoint() string { return p.ClientURL }

// PID is the process id of the current (or last) process.
func (p *EtcdProc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process has not exited.
func (p *EtcdProc) Running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, then SIGKILL after 5 s, and waits for the exit.
func (p *EtcdProc) Stop() { p.signal(syscall.SIGTERM) }

// Kill sends SIGKILL and waits for the exit, like a crash.
func (p *EtcdProc) Kill() { p.signal(syscall.SIGKILL) }

func (p *EtcdProc) signal(sig syscall.Signal) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd != nil {
		stopProcess(cmd.Process, done, sig)
	}
}

// stopProcess sends sig to a process that has not exited (done closes when it has), then
// SIGKILL after stopGrace, and waits for the exit.
func stopProcess(p *os.Process, done <-chan struct{}, sig os.Signal) {
	select {
	case <-done:
		return
	default:
	}
	_ = p.Signal(sig)
	select {
	case <-done:
	case <-time.After(stopGrace):
		_ = p.Kill()
		<-done
	}
}

// Restart stops the process if it runs and starts it again on the same data
// dir and URLs.
func (p *EtcdProc) Restart(t testing.TB) {
	t.Helper()
	p.Stop()
	if err := p.start(); err != nil {
		t.Fatalf("restart etcd %s: %v", p.Name, err)
	}
}

// WaitHealthy polls /health until it reports true, which needs a leader and
// a committed read, so it only succeeds once a quorum is up.
func (p *EtcdProc) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		if !p.Running() {
			return fmt.Errorf("etcd %s exited: %v", p.Name, p.exitErr())
		}
		resp, err := hc.Get(p.ClientURL + "/health")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"health":"true"`)) {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd %s not healthy after %v: %s", p.Name, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// EtcdCluster is a cluster of real etcd processes on loopback.
type EtcdCluster struct {
	Members []*EtcdProc
	Token   string
}

// StartEtcdCluster starts n etcd processes from bin/etcd as a new cluster and
// waits until every member is healthy. opts adjust each member's config
// (e.g. ExtraArgs) before it starts.
func StartEtcdCluster(t testing.TB, n int, opts ...func(*ProcConfig)) *EtcdCluster {
	t.Helper()
	bin := Bin(t, "etcd")
	var lastErr error
	for range startAttempts {
		ports := FreePorts(t, 2*n)
		token := "etcdguard-test-" + randHex(4)
		cfgs := make([]ProcConfig, n)
		peers := make([]string, n)
		for i := range cfgs {
			name := fmt.Sprintf("m%d", i)
			cfgs[i] = ProcConfig{
				Name:                name,
				DataDir:             filepath.Join(t.TempDir(), name+".etcd"),
				ClientURL:           fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
				PeerURL:             fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
				InitialClusterToken: token,
				InitialClusterState: "new",
				Binary:              bin,
			}
			peers[i] = name + "=" + cfgs[i].PeerURL
		}
		c := &EtcdCluster{Token: token}
		var err error
		for i := range cfgs {
			cfgs[i].InitialCluster = strings.Join(peers, ",")
			for _, o := range opts {
				o(&cfgs[i])
			}
			p := newProc(t, cfgs[i])
			c.Members = append(c.Members, p)
			if err = p.start(); err != nil {
				break
			}
		}
		if err == nil {
			err = c.WaitHealthy(readyTimeout)
		}
		if err == nil {
			return c
		}
		if !c.bindFailed() {
			t.Fatalf("start etcd cluster: %v", err)
		}
		// A port was taken between reservation and bind (a dial may even
		// have reached the thief): start over with new ports, since the
		// peer URLs are baked into every member.
		lastErr = err
		for _, m := range c.Members {
			m.Kill()
		}
	}
	t.Fatalf("start etcd cluster: no free ports after %d attempts: %v", startAttempts, lastErr)
	return nil
}

func (c *EtcdCluster) bindFailed() bool {
	for _, m := range c.Members {
		if strings.Contains(tail(m.LogPath), "address already in use") {
			return true
		}
	}
	return false
}

// WaitHealthy waits until every running member reports healthy.
func (c *EtcdCluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		if err := m.WaitHealthy(time.Until(deadline)); err != nil {
			return err
		}
	}
	return nil
}

// Endpoints returns every member's client URL, stopped members included.
func (c *EtcdCluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.ClientURL
	}
	return eps
}

// Client returns a client for all members, closed when the test ends.
func (c *EtcdCluster) Client(t testing.TB, opts ...func(*clientv3.Config)) *clientv3.Client {
	t.Helper()
	return newClient(t, c.Endpoints(), opts)
}

// Stop stops member i gracefully.
func (c *EtcdCluster) Stop(i int) { c.Members[i].Stop() }

// Kill kills member i with SIGKILL.
func (c *EtcdCluster) Kill(i int) { c.Members[i].Kill() }

func newClient(t testing.TB, endpoints []string, opts []func(*clientv3.Config)) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		// The default logger prints retry warnings to stderr when members
		// are stopped on purpose.
		Logger: zap.NewNop(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcd client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// FreePorts returns n distinct loopback TCP ports that were free a moment
// ago. All n are held open together so they differ; callers must still
// retry on EADDRINUSE, since another process may bind one after release.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	ls := make([]net.Listener, n)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("reserve a port: %v", err)
		}
		ls[i] = l
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func hostOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return rawURL
	}
	return u.Host
}

// tail returns the last lines of a log file, for failure messages.
func tail(path string) string {
	const maxBytes, maxLines = 8 << 10, 40
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxBytes {
		f.Seek(fi.Size()-maxBytes, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
