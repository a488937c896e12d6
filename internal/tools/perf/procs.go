package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs is every long-running process perf started (etcd, versitygw, daemons, loadgen),
// so that one cleanup stops them all, whatever way perf exits.
type procs struct {
	mu   sync.Mutex
	list []*server
}

// server is a process perf started and stops itself.
type server struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // once done
}

func (p *procs) start(name, log string, env []string, argv ...string) (*server, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// Its own process group: a Ctrl-C at the terminal reaches perf, which stops
	// everything in order, and a kill of the group also reaches a shell's children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, argv[0], err)
	}
	s := &server{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		f.Close()
		close(s.done)
	}()
	p.mu.Lock()
	p.list = append(p.list, s)
	p.mu.Unlock()
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (s *server) stop(grace time.Duration) {
	if !s.alive() {
		return
	}
	_ = syscall.Kill(-s.pid(), syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(grace):
		_ = syscall.Kill(-s.pid(), syscall.SIGKILL)
		<-s.done
	}
}

// failure describes a server that is not working, with the tail of its log.
func (s *server) failure(what string) error {
	return fmt.Errorf("%s: %s; the tail of %s:\n%s", s.name, what, s.log, tail(s.log, 20))
}

func (p *procs) stopAll() {
	p.mu.Lock()
	list := p.list
	p.list = nil
	p.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop(10 * time.Second)
	}
}

func (p *procs) remove(s *server) {
	s.stop(10 * time.Second)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.list {
		if x == s {
			p.list = append(p.list[:i], p.list[i+1:]...)
			break
		}
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return tailBytes(b, n)
}

func tailBytes(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// procCPU is the CPU seconds (user+system) a live process has used so far, from
// /proc/PID/stat; 0 when pid is 0.
func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1 // gone: spent refuses the sample
	}
	return parseStatCPU(b)
}

// spent is the CPU a server used between two procCPU readings, or an error if it was gone
// at either (a server that died mid-run would show as negative CPU).
func spent(what string, before, after float64) (float64, error) {
	if before < 0 || after < 0 || after < before {
		return 0, fmt.Errorf("the %s process ended during the run", what)
	}
	return after - before, nil
}

// clkTck is sysconf(_SC_CLK_TCK): 100 on every Linux Go runs on.
const clkTck = 100

func parseStatCPU(b []byte) float64 {
	// The command name (field 2) may hold spaces and parentheses: count from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / clkTck
}

// etcdServer is one etcd perf started.
type etcdServer struct {
	*server
	endpoint string
	version  string
}

// startEtcd starts a one-member etcd from binary on loopback in dir and waits until it serves.
func (e *env) startEtcd(ctx context.Context, binary, dir string) (*etcdServer, error) {
	cport, err := freePort()
	if err != nil {
		return nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	name := filepath.Base(dir)
	ep := fmt.Sprintf("http://127.0.0.1:%d", cport)
	peer := fmt.Sprintf("http://127.0.0.1:%d", pport)
	s, err := e.procs.start(filepath.Base(binary), dir+".log", nil, binary, "--name", name, "--data-dir", dir, "--log-level", "error",
		"--listen-client-urls", ep, "--advertise-client-urls", ep, "--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer, "--initial-cluster", name+"="+peer,
		"--quota-backend-bytes", strconv.FormatInt(16<<30, 10))
	if err != nil {
		return nil, err
	}
	for i := 0; i < 300; i++ {
		if !s.alive() {
			return nil, s.failure("exited at start")
		}
		out, err := exec.CommandContext(ctx, e.tool("etcdctl"), "--endpoints", ep, "endpoint", "status", "-w", "json").Output()
		if err == nil {
			return &etcdServer{server: s, endpoint: ep, version: jsonField(out, "version")}, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, s.failure("not healthy after 60s")
}

// jsonField digs "name":"value" out of etcdctl's one-line JSON without modelling it.
func jsonField(b []byte, name string) string {
	k := `"` + name + `":"`
	i := bytes.Index(b, []byte(k))
	if i < 0 {
		return ""
	}
	rest := b[i+len(k):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// s3Server is the versitygw perf started, with the bucket "bench".
type s3Server struct {
	*server
	url, dir string
	env      []string // credentials and endpoint for etcdguard (AWS_* and ETCDGUARD_S3_*)
	curlCfg  string   // a curl config that signs requests with the credentials
}

func (e *env) startS3(ctx context.Context, dir string) (*s3Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ak := "bench" + randHex(4)
	sk := randHex(16)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Credentials through the environment, never argv: they stay out of process listings.
	s, err := e.procs.start("versitygw", dir+".log", []string{"ROOT_ACCESS_KEY=" + ak, "ROOT_SECRET_KEY=" + sk},
		e.tool("versitygw"), "--port", fmt.Sprintf("127.0.0.1:%d", port), "posix", dir)
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := dir + ".curl"
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "user = \"%s:%s\"\naws-sigv4 = \"aws:amz:us-east-1:s3\"\nheader = \"x-amz-content-sha256: UNSIGNED-PAYLOAD\"\nsilent\nshow-error\nfail\n", ak, sk), 0o600); err != nil {
		return nil, err
	}
	srv := &s3Server{server: s, url: url, dir: dir, curlCfg: cfg, env: []string{
		"AWS_ACCESS_KEY_ID=" + ak, "AWS_SECRET_ACCESS_KEY=" + sk, "AWS_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true",
		"ETCDGUARD_S3_ENDPOINT=" + url, "ETCDGUARD_S3_PATH_STYLE=true",
	}}
	for i := 0; i < 300; i++ {
		if !s.alive() {
			return nil, s.failure("exited at start")
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			out, err := exec.CommandContext(ctx, "curl", "-K", cfg, "-X", "PUT", url+"/bench").CombinedOutput()
			if err != nil {
				return nil, fmt.Errorf("create bucket bench on versitygw: %w: %s", err, out)
			}
			return srv, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, s.failure("not answering after 60s")
}

// run runs a short helper command (not measured) and names it and its stderr on failure.
func (e *env) run(ctx context.Context, extraEnv []string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), extraEnv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s failed: %w; stderr tail:\n%s", shellJoin(argv), err, tailBytes(stderr.Bytes(), 20))
	}
	return out, nil
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t'\"$;&|") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

var errInterrupted = errors.New("interrupted")
