package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// TestHelmChartRunsDaemon runs the daemon exactly as the chart's DaemonSet would: its
// command and env, the rendered ConfigMap and Secret and the three etcd files at the
// paths the pod mounts them (under a temp root), against TLS etcd and a real S3 server
// that checks signatures, with the keys only in the Secret's credentials file. A
// snapshot must reach the store and /metrics and /readyz must answer on the metrics port.
func TestHelmChartRunsDaemon(t *testing.T) {
	s3 := testharness.StartVersityGW(t)
	pki := testharness.GenerateTLS(t)
	e := testharness.StartEtcd(t, testharness.WithClientTLS(pki))
	port := testharness.FreePorts(t, 1)[0]
	r, err := renderChart(t, map[string]any{
		"config": map[string]any{"store": s3.URL("etcd"), "s3-endpoint": s3.Endpoint, "s3-path-style": true,
			"s3-region": s3.Region, "schedule": "@every 2s", "election-ttl": "2s", "log-format": "text"},
		"credentials": map[string]any{"accessKeyId": s3.AccessKey, "secretAccessKey": s3.SecretKey, "region": s3.Region},
		"etcd":        map[string]any{"endpoints": []any{e.Endpoints[0]}}, // as YAML would give it
		"metricsPort": port,
	}, "testdata/helm-secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ps := r.ds.Spec.Template.Spec
	c := ps.Containers[0]

	// The pod's filesystem under root: each mount filled from its volume.
	root := t.TempDir()
	hostFiles := map[string]string{ // kubeadm's paths on the node → this test's PKI
		"/etc/kubernetes/pki/etcd/ca.crt":                 pki.CACert,
		"/etc/kubernetes/pki/etcd/healthcheck-client.crt": pki.ClientCert,
		"/etc/kubernetes/pki/etcd/healthcheck-client.key": pki.ClientKey,
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		volumes[v.Name] = v
	}
	var mountPaths []string
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("mount %s: no volume %s", m.MountPath, m.Name)
		}
		mountPaths = append(mountPaths, m.MountPath)
		dst := filepath.Join(root, m.MountPath)
		switch {
		case v.HostPath != nil:
			src, ok := hostFiles[v.HostPath.Path]
			if !ok {
				t.Fatalf("host path %s is not one of the etcd files", v.HostPath.Path)
			}
			copyFile(t, src, dst)
		case v.ConfigMap != nil && v.ConfigMap.Name == r.cm.Name:
			for k, data := range r.cm.Data {
				writeFile(t, filepath.Join(dst, k), data)
			}
		case v.Secret != nil && v.Secret.SecretName == r.secret.Name:
			for k, data := range r.secret.StringData {
				writeFile(t, filepath.Join(dst, k), data)
			}
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dst, 0o700); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("volume %s: unexpected source", m.Name)
		}
	}
	// Container paths become paths under root, and every address of the node becomes
	// loopback, in the config, the command and the env alike.
	pathToken := regexp.MustCompile(`(^|[\s"'=:,\[])(/[^\s"',\]]*)`)
	remap := func(s string) string {
		s = pathToken.ReplaceAllStringFunc(s, func(m string) string {
			i := strings.IndexByte(m, '/')
			for _, p := range mountPaths {
				if m[i:] == p || strings.HasPrefix(m[i:], p+"/") {
					return m[:i] + filepath.Join(root, m[i:])
				}
			}
			return m
		})
		return strings.ReplaceAll(s, "0.0.0.0:", "127.0.0.1:")
	}
	cfgPath := filepath.Join(root, "/etc/etcdguard/config/config.yaml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatalf("the command's --config is not in the ConfigMap mount: %v", err)
	}
	writeFile(t, cfgPath, remap(string(cfg)))

	bin := filepath.Join(t.TempDir(), "etcdguard")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/etcdguard").CombinedOutput(); err != nil {
		t.Fatalf("building etcdguard: %v\n%s", err, out)
	}
	if c.Command[0] != "/etcdguard" {
		t.Fatalf("command %v: the image's binary is /etcdguard", c.Command)
	}
	args := make([]string, len(c.Command)-1)
	for i, a := range c.Command[1:] {
		args[i] = remap(a)
	}
	home := t.TempDir()
	// Only the pod's env, and nothing of this machine's AWS setup: the keys must come
	// from the Secret's file.
	env := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "AWS_EC2_METADATA_DISABLED=true"}
	for _, ev := range c.Env {
		if ev.ValueFrom != nil {
			t.Fatalf("env %s comes from %v: not set in this test", ev.Name, ev.ValueFrom)
		}
		env = append(env, ev.Name+"="+remap(ev.Value))
	}
	var logs syncLog
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})

	// Where the PodMonitor scrapes and kubelet probes: the port named metrics.
	base := "http://127.0.0.1:" + strconv.Itoa(int(c.Ports[0].ContainerPort))
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for {
		select {
		case <-exited:
			t.Fatalf("the daemon exited: %v\n%s", waitErr, logs.String())
		default:
		}
		stored, ready := metricValue(base+"/metrics", `etcdguard_snapshots_stored{cluster="lab"}`), httpStatus(base+c.ReadinessProbe.HTTPGet.Path)
		last = fmt.Sprintf("snapshots stored %v, %s %d", stored, c.ReadinessProbe.HTTPGet.Path, ready)
		if stored >= 1 && ready == http.StatusOK && httpStatus(base+c.LivenessProbe.HTTPGet.Path) == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot stored and ready within 60s: %s", last)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if strings.Contains(logs.String(), s3.SecretKey) {
		t.Errorf("the secret key is in the daemon's log")
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, string(b))
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func httpStatus(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metricValue reads one sample from a /metrics page; -1 when it is not there.
func metricValue(url, series string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// syncLog collects the daemon's output from its two pipes while the test reads it.
type syncLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
