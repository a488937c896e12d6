package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// The runbook's example values that an operator replaces with what they chose; the test
// replaces them the same way, and fails if the runbook no longer has them.
const (
	runbookSnapshot = "20260102T020000Z-1a2b3c"
	runbookToken    = "etcd-restore-20260102T0300"
	runbookStore    = "s3://my-etcd-backups/etcd"
)

// runbookBlock is one sh block of the runbook: where it runs, and what.
type runbookBlock struct {
	section string // the heading above it
	line    int
	hosts   []string
	script  string
	norun   bool
}

var onLine = regexp.MustCompile(`^# on (every master|m[1-3])\b`)

// readRunbook returns the runbook's sh blocks in order. Every block must say where it
// runs in its first line, as an operator needs it to.
func readRunbook(t *testing.T) []runbookBlock {
	t.Helper()
	f, err := os.Open(filepath.Join(testharness.RepoRoot(t), "deploy", "runbooks", "restore.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []runbookBlock
	var cur *runbookBlock
	var section string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(l, "## "):
			section = strings.TrimPrefix(l, "## ")
		case cur == nil && (l == "```sh" || l == "```sh norun"):
			cur = &runbookBlock{section: section, line: n + 1, norun: l == "```sh norun"}
		case cur != nil && l == "```":
			first, _, _ := strings.Cut(cur.script, "\n")
			m := onLine.FindStringSubmatch(first)
			if cur.norun {
				m = []string{"", "every master"}
			} else if m == nil {
				t.Fatalf("restore.md:%d: the block's first line %q does not say where it runs (# on every master, # on m1)", cur.line, first)
			}
			cur.hosts = []string{m[1]}
			if m[1] == "every master" {
				cur.hosts = []string{"m1", "m2", "m3"}
			}
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.script += l + "\n"
		}
	}
	if cur != nil {
		t.Fatalf("restore.md:%d: block not closed", cur.line)
	}
	return blocks
}

// section returns the blocks under the headings that start with any of prefixes, in order.
func section(t *testing.T, blocks []runbookBlock, prefixes ...string) []runbookBlock {
	t.Helper()
	var out []runbookBlock
	for _, p := range prefixes {
		n := len(out)
		for _, b := range blocks {
			if strings.HasPrefix(b.section, p) {
				out = append(out, b)
			}
		}
		if len(out) == n {
			t.Fatalf("restore.md has no sh block under a heading starting with %q", p)
		}
	}
	return out
}

// master is one simulated kubeadm control-plane node: its own root for the paths the
// runbook names, its own loopback addresses, a kubelet stand-in running its static pods,
// and an operator's root shell whose exported variables live on between blocks.
type master struct {
	name    string
	n       int
	root    string
	node    *strings.Replacer // the node's paths and addresses → here
	addr    *strings.Replacer // the node's addresses only → here
	kubelet *testharness.Kubelet
	cs      *kubernetes.Clientset // its API server
	shell   string                // the shell's exported variables
	env     []string
}

func newMaster(t *testing.T, root string, net, n int) *master {
	m := &master{name: fmt.Sprintf("m%d", n), n: n, root: filepath.Join(root, fmt.Sprintf("m%d", n))}
	// 10.0.0.N is master N's address, 127.0.0.1 each master's own loopback: on one
	// machine they become 127.NET.10.N and 127.NET.N.1, NET random so that two runs on one
	// machine do not meet on the fixed ports (2379, 2380, 6443, 9479). Every address of
	// the node (0.0.0.0, where the daemon listens) becomes the node's address, where
	// Prometheus and kubelet's probes reach it. Mapping twice changes nothing, since
	// what the shell writes into a manifest (an --initial-cluster) is mapped again when
	// the kubelet starts it.
	addrs := []string{"127.0.0.1", fmt.Sprintf("127.%d.%d.1", net, n), "0.0.0.0", fmt.Sprintf("127.%d.10.%d", net, n),
		"10.0.0.", fmt.Sprintf("127.%d.10.", net)}
	m.addr = strings.NewReplacer(addrs...)
	var paths []string
	for _, p := range []string{"/etc/kubernetes", "/etc/etcdguard", "/var/lib/etcd", "/root/"} {
		paths = append(paths, p, m.root+p)
	}
	m.node = strings.NewReplacer(append(paths, addrs...)...)
	for _, d := range []string{"etc/kubernetes/manifests", "etc/etcdguard", "var/lib", "root"} {
		if err := os.MkdirAll(filepath.Join(m.root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// waitDaemonReady waits until the master's etcdguard daemon answers where the shipped
// static pod's readiness probe asks: the pod IP (the node's address, with hostNetwork)
// at the probe's port.
func (m *master) waitDaemonReady(t *testing.T) {
	t.Helper()
	probe := readStaticPod(t).Spec.Containers[0].ReadinessProbe.HTTPGet
	if probe.Host != "" {
		t.Fatalf("the static pod's readiness probe asks %s, not the pod IP", probe.Host)
	}
	url := m.addr.Replace(fmt.Sprintf("http://10.0.0.%d:%d%s", m.n, probe.Port.IntValue(), probe.Path))
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == "ready\n" { // not another server's /readyz
				return
			}
			err = fmt.Errorf("%s: %q", resp.Status, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the etcdguard daemon is not ready at %s after a minute: %v", m.name, url, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// newShell makes the operator's next block run in a fresh shell, with nothing exported
// by earlier blocks.
func (m *master) newShell(t *testing.T) {
	t.Helper()
	m.shell = filepath.Join(m.root, "root", ".shell")
	if err := os.WriteFile(m.shell, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// install writes a file onto the master at its node path, with the node's paths and
// addresses in it mapped as they are here.
func (m *master) install(t *testing.T, nodePath, content string) {
	t.Helper()
	p := m.node.Replace(nodePath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(m.node.Replace(content)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// sh runs a runbook block in the master's root shell, as an operator pastes it.
func (m *master) sh(t *testing.T, b runbookBlock, values *strings.Replacer) {
	t.Helper()
	script := "set -euo pipefail\n. " + m.shell + "\n" + m.node.Replace(values.Replace(b.script)) +
		// What the blocks exported lives on, but not what the shell sets by itself.
		"export -p | grep -Ev '^declare -x (PATH|HOME|PWD|OLDPWD|SHLVL)=' > " + m.shell + ".new && mv " + m.shell + ".new " + m.shell + "\n"
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env, cmd.Dir = m.env, filepath.Join(m.root, "root")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s$ restore.md:%d (%s, %.1fs)\n%s", m.name, b.line, b.section, time.Since(start).Seconds(), out)
	if err != nil {
		t.Fatalf("%s: the block at restore.md:%d failed: %v", m.name, b.line, err)
	}
}

// kubeadm's etcd manifest for a stacked member (3.6 flags). As kubeadm writes it, the
// first master's lists only itself and has no --initial-cluster-state (so: new); a
// joining master's lists the members so far and says existing.
const etcdManifest = `apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://10.0.0.@N@:2379
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.0.@N@:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --feature-gates=InitialCorruptCheck=true
    - --initial-advertise-peer-urls=https://10.0.0.@N@:2380
    - --initial-cluster=@CLUSTER@
@STATE@    - --key-file=/etc/kubernetes/pki/etcd/server.key
    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.@N@:2379
    - --listen-metrics-urls=http://127.0.0.1:2381
    - --listen-peer-urls=https://10.0.0.@N@:2380
    - --name=m@N@
    - --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
    - --peer-client-cert-auth=true
    - --peer-key-file=/etc/kubernetes/pki/etcd/peer.key
    - --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    - --snapshot-count=10000
    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    - --watch-progress-notify-interval=5s
    image: registry.k8s.io/etcd:3.6.5-0
    name: etcd
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  priorityClassName: system-node-critical
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: /var/lib/etcd
      type: DirectoryOrCreate
    name: etcd-data
`

// kubeadm's kube-apiserver manifest, bound to the master's address only, with a token
// file for the admin kubeconfig where kubeadm has a client certificate, and no endpoint
// reconciler (it refuses loopback addresses, which are all there is here).
const apiserverManifest = `apiVersion: v1
kind: Pod
metadata:
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.0.0.@N@
    - --bind-address=10.0.0.@N@
    - --secure-port=6443
    - --authorization-mode=Node,RBAC
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --enable-admission-plugins=NodeRestriction
    - --etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt
    - --etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt
    - --etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key
    - --etcd-servers=https://127.0.0.1:2379
    - --service-account-issuer=https://kubernetes.default.svc.cluster.local
    - --service-account-key-file=/etc/kubernetes/pki/sa.pub
    - --service-account-signing-key-file=/etc/kubernetes/pki/sa.key
    - --service-cluster-ip-range=10.96.0.0/12
    - --tls-cert-file=/etc/kubernetes/pki/apiserver.crt
    - --tls-private-key-file=/etc/kubernetes/pki/apiserver.key
    - --token-auth-file=/etc/kubernetes/pki/tokens.csv
    - --endpoint-reconciler-type=none
    - --enable-priority-and-fairness=false
    - --profiling=false
    image: registry.k8s.io/kube-apiserver:v1.37.2
    name: kube-apiserver
    volumeMounts:
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
  hostNetwork: true
  priorityClassName: system-node-critical
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki
      type: DirectoryOrCreate
    name: k8s-certs
`

const adminConf = `apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /etc/kubernetes/pki/ca.crt
    server: https://10.0.0.1:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
users:
- name: kubernetes-admin
  user:
    token: @TOKEN@
`

// daemonConfig is deploy/config.example.yaml as shipped, but for what must differ here:
// the store (a local S3 server; its endpoint and keys come from the node's environment),
// no KMS, no Alertmanager, snapshots every 10 s and delta capture on.
func daemonConfig(t *testing.T, store string) string {
	t.Helper()
	cfg := exampleConfig(t, map[string]any{"store": store, "s3-sse": nil, "s3-region": nil, "alert-alertmanager": nil,
		"schedule": "@every 10s"})
	cfg["delta"] = true
	cfg["delta-flush"] = "1s"
	return marshalConfig(t, cfg)
}

// exampleConfig is deploy/config.example.yaml with overrides applied (nil deletes a key);
// every key overridden must be one the example has, so the test follows what ships.
func exampleConfig(t *testing.T, overrides map[string]any) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testharness.RepoRoot(t), "deploy", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for k, v := range overrides {
		// A key the example leaves commented out (the daemon's own alerts) counts.
		if _, ok := cfg[k]; !ok && !strings.Contains(string(b), "\n# "+k+":") {
			t.Fatalf("deploy/config.example.yaml has no %s: the test overrides it", k)
		}
		if v == nil {
			delete(cfg, k)
		} else {
			cfg[k] = v
		}
	}
	return cfg
}

func marshalConfig(t *testing.T, cfg map[string]any) string {
	t.Helper()
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

type runbookCluster struct {
	masters  []*master
	s3       *testharness.S3Server
	cs       *kubernetes.Clientset
	guardEnv []string // etcdguard run by the test itself, with m1's config
}

func startRunbookCluster(t *testing.T) *runbookCluster {
	s3 := testharness.StartMinIO(t)
	net := 1 + mathrand.IntN(250)
	var ips []string
	for n := 1; n <= 3; n++ {
		ips = append(ips, fmt.Sprintf("127.%d.10.%d", net, n), fmt.Sprintf("127.%d.%d.1", net, n))
	}
	pki := testharness.GenerateKubeadmPKI(t, ips...)
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprintf("%x", saKey.D.Bytes()[:16])
	root := t.TempDir()
	tools := filepath.Join(root, "tools")
	if err := os.MkdirAll(tools, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{"etcdguard": etcdguardBin, "etcdctl": testharness.Bin(t, "etcdctl"),
		"etcdutl": testharness.Bin(t, "etcdutl"), "kubectl": testharness.Bin(t, "kubectl")} {
		if err := os.Symlink(path, filepath.Join(tools, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range []string{"aws", "zstd", "jq", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: the runbook's fallback needs it (make tools installs it from Debian's packages)", tool)
		}
	}
	// The real AWS CLI, pointed at the local S3 server: the runbook is written for AWS,
	// where the endpoint is the default (and CLIs before 2.13 ignore AWS_ENDPOINT_URL_S3).
	aws := must(exec.LookPath("aws"))
	if err := os.WriteFile(filepath.Join(tools, "aws"), []byte("#!/bin/sh\nexec "+aws+" --endpoint-url \"$AWS_ENDPOINT_URL_S3\" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	awsConfig := filepath.Join(root, "aws-config")
	if err := os.WriteFile(awsConfig, []byte("[default]\ns3 =\n    addressing_style = path\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// What each image's command is here; the kubelet fails to start anything else.
	images := map[string]string{"registry.k8s.io/etcd:3.6.5-0": testharness.Bin(t, "etcd-3.6"),
		"registry.k8s.io/kube-apiserver:v1.37.2": testharness.Bin(t, "kube-apiserver")}
	daemonPod, err := os.ReadFile(filepath.Join(testharness.RepoRoot(t), "deploy", "static-pod.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(daemonPod, &pod); err != nil {
		t.Fatal(err)
	}
	images[pod.Spec.Containers[0].Image] = etcdguardBin
	// Every file the config names must be in a volume the pod mounts: the test runs the
	// daemon on the host's files, the real pod sees only its mounts.
	config := daemonConfig(t, s3.URL("etcd"))
	containerPaths(t, pod, func(p string) string { return p }, config)
	c := &runbookCluster{s3: s3}
	for n := 1; n <= 3; n++ {
		m := newMaster(t, root, net, n)
		if err := os.CopyFS(filepath.Join(m.root, "etc/kubernetes/pki"), os.DirFS(pki.Dir)); err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string]*pem.Block{"sa.key": {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)},
			"sa.pub": {Type: "PUBLIC KEY", Bytes: saPub}} {
			if err := os.WriteFile(filepath.Join(m.root, "etc/kubernetes/pki", name), pem.EncodeToMemory(b), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		m.install(t, "/etc/kubernetes/pki/tokens.csv", token+",kubernetes-admin,kubernetes-admin,system:masters\n")
		m.install(t, "/etc/kubernetes/admin.conf", strings.ReplaceAll(adminConf, "@TOKEN@", token))
		m.install(t, "/etc/etcdguard/config.yaml", config)
		// The S3 keys only in the file the static pod mounts (deploy/credentials.md); the
		// operator's shell reads the same file (runbook step 1).
		m.install(t, "/etc/etcdguard/aws/credentials", fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s3.AccessKey, s3.SecretKey))
		nodeEnv := []string{"AWS_CONFIG_FILE=" + awsConfig}
		for _, e := range s3.Env() {
			if !strings.HasPrefix(e, "AWS_ACCESS_KEY_ID=") && !strings.HasPrefix(e, "AWS_SECRET_ACCESS_KEY=") {
				nodeEnv = append(nodeEnv, e)
			}
		}
		m.kubelet = testharness.StartKubelet(t, testharness.KubeletOptions{
			Node: m.name, Manifests: filepath.Join(m.root, "etc/kubernetes/manifests"),
			Path: m.node.Replace, Addr: m.addr.Replace, Env: nodeEnv,
			Binary: func(image, command string) string { return images[image] }})
		m.newShell(t)
		m.env = append([]string{"PATH=" + tools + ":" + m.kubelet.CrictlDir + ":" + os.Getenv("PATH"), "HOME=" + filepath.Join(m.root, "root")}, nodeEnv...)
		c.masters = append(c.masters, m)
	}
	// The cluster grows as kubeadm grows it: the first master alone, then each joining
	// master added as a member before its manifests appear. Manifests hold the node's
	// paths and addresses: the kubelet maps them as it starts each container; the daemon's
	// is exactly as shipped.
	var peers []string
	for _, m := range c.masters {
		n := strconv.Itoa(m.n)
		peer := "m" + n + "=https://10.0.0." + n + ":2380"
		state := ""
		if m.n > 1 {
			state = "    - --initial-cluster-state=existing\n"
			// etcd refuses a member add until every member has been connected for a few
			// seconds ("unhealthy cluster"); kubeadm retries too.
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
				cmd := exec.Command(testharness.Bin(t, "etcdctl"), "member", "add", m.name, "--peer-urls="+m.node.Replace("https://10.0.0."+n+":2380"))
				cmd.Env = c.etcdctlEnv(c.masters[0])
				out, err := cmd.CombinedOutput()
				if err == nil {
					break
				} else if time.Now().After(deadline) {
					t.Fatalf("member add %s: %v\n%s", m.name, err, out)
				}
			}
		}
		peers = append(peers, peer)
		etcd := strings.NewReplacer("@N@", n, "@CLUSTER@", strings.Join(peers, ","), "@STATE@", state).Replace(etcdManifest)
		for name, pod := range map[string]string{"etcd.yaml": etcd,
			"kube-apiserver.yaml": strings.ReplaceAll(apiserverManifest, "@N@", n), "etcdguard.yaml": string(daemonPod)} {
			if err := os.WriteFile(filepath.Join(m.root, "etc/kubernetes/manifests", name), []byte(pod), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		c.waitHealthy(t, c.masters[:m.n])
	}
	m1 := c.masters[0]
	c.guardEnv = append([]string{"ETCDGUARD_CONFIG=" + m1.node.Replace("/etc/etcdguard/config.yaml"),
		"ETCDGUARD_ENDPOINTS=" + m1.node.Replace("https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379")}, s3.Env()...)
	for _, m := range c.masters {
		m.cs = must(kubernetes.NewForConfig(&rest.Config{Host: m.node.Replace("https://10.0.0." + strconv.Itoa(m.n) + ":6443"), BearerToken: token,
			TLSClientConfig: rest.TLSClientConfig{CAFile: pki.CACert}, Timeout: 30 * time.Second}))
	}
	c.cs = c.masters[0].cs
	c.waitAPI(t)
	return c
}

// etcdctlEnv is the environment for etcdctl on the master m, at its own member.
func (c *runbookCluster) etcdctlEnv(m *master) []string {
	return []string{
		"ETCDCTL_ENDPOINTS=" + m.node.Replace("https://10.0.0."+strconv.Itoa(m.n)+":2379"),
		"ETCDCTL_CACERT=" + m.node.Replace("/etc/kubernetes/pki/etcd/ca.crt"),
		"ETCDCTL_CERT=" + m.node.Replace("/etc/kubernetes/pki/etcd/healthcheck-client.crt"),
		"ETCDCTL_KEY=" + m.node.Replace("/etc/kubernetes/pki/etcd/healthcheck-client.key"),
	}
}

// waitHealthy waits until every member on masters is healthy.
func (c *runbookCluster) waitHealthy(t *testing.T, masters []*master) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for _, m := range masters {
		for {
			cmd := exec.Command(testharness.Bin(t, "etcdctl"), "endpoint", "health")
			cmd.Env = c.etcdctlEnv(m)
			out, err := cmd.CombinedOutput()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("etcd on %s is not healthy: %v\n%s", m.name, err, out)
			}
			time.Sleep(time.Second)
		}
	}
}

// waitAPI waits until m1's API server serves.
func (c *runbookCluster) waitAPI(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		_, err := c.cs.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("m1's API server does not serve: %v", err)
		}
		time.Sleep(time.Second)
	}
}

type listedSnapshot struct {
	ID       string `json:"id"`
	Revision int64  `json:"revision"`
	History  string `json:"history"`
}

// waitSnapshot waits for a snapshot the daemons took at or above revision rev (the
// newest), and returns it.
func (c *runbookCluster) waitSnapshot(t *testing.T, rev int64, notHistory string) listedSnapshot {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := run(t, c.guardEnv, "snapshot", "list", "-o", "json")
		if r.code == 0 {
			var list []listedSnapshot
			if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
				t.Fatalf("snapshot list -o json: %v\n%s", err, r.stdout)
			}
			if len(list) > 0 && list[0].Revision >= rev && list[0].History != notHistory {
				return list[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot at or above revision %d (not of history %q) within 2m: exit %d %s%s", rev, notHistory, r.code, r.stdout, r.stderr)
		}
		time.Sleep(2 * time.Second)
	}
}

// configMaps returns the configmaps m1's API server serves in namespace ns, by name.
func (c *runbookCluster) configMaps(t *testing.T, ns string) map[string]string {
	t.Helper()
	list := must(c.cs.CoreV1().ConfigMaps(ns).List(context.Background(), metav1.ListOptions{}))
	out := map[string]string{}
	for _, cm := range list.Items {
		if cm.Name != "kube-root-ca.crt" {
			out[cm.Name] = cm.Data["v"]
		}
	}
	return out
}

func (c *runbookCluster) createConfigMaps(t *testing.T, ns string, n int) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		kubeCreate(t, func() error {
			_, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			return err
		})
	}
	for i := range n {
		kubeCreate(t, func() error {
			_, err := c.cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%d", i)},
				Data: map[string]string{"v": ns + "/" + strconv.Itoa(i)}}, metav1.CreateOptions{})
			return err
		})
	}
}

// kubeCreate retries a create that a freshly restored cluster answers with a timeout (its
// first leader election under a loaded CI runner): "etcdserver: request timed out,
// possibly due to previous leader failure". A retry that finds the object created by
// the timed-out attempt is done.
func kubeCreate(t *testing.T, fn func() error) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		err := fn()
		switch {
		case err == nil, attempt > 1 && apierrors.IsAlreadyExists(err):
			return
		case attempt < 5 && (apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsInternalError(err) ||
			strings.Contains(err.Error(), "request timed out")):
			t.Logf("create attempt %d: %v; retrying", attempt, err)
			time.Sleep(time.Second)
		default:
			t.Fatalf("create: %v", err)
		}
	}
}

func (c *runbookCluster) deleteConfigMaps(t *testing.T, ns string) {
	t.Helper()
	for name := range c.configMaps(t, ns) {
		if err := c.cs.CoreV1().ConfigMaps(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// revision is what the cluster's newest write was, as a resourceVersion of a list.
func (c *runbookCluster) revision(t *testing.T) int64 {
	t.Helper()
	list := must(c.cs.CoreV1().ConfigMaps("").List(context.Background(), metav1.ListOptions{}))
	return must(strconv.ParseInt(list.ResourceVersion, 10, 64))
}

// follow runs blocks in order, each on the masters it names.
func (c *runbookCluster) follow(t *testing.T, blocks []runbookBlock, values *strings.Replacer) {
	t.Helper()
	for _, b := range blocks {
		if b.norun {
			t.Logf("restore.md:%d (%s) not run here: it needs containerd's ctr and the images in its cache", b.line, b.section)
			continue
		}
		for _, h := range b.hosts {
			n := must(strconv.Atoi(strings.TrimPrefix(h, "m")))
			c.masters[n-1].sh(t, b, values)
		}
	}
}

// TestE2ERunbook follows deploy/runbooks/restore.md on three simulated kubeadm masters
// with etcd 3.6 (client and peer TLS), a kube-apiserver and the etcdguard daemon as static
// pods: the full restore, replacing one lost member, and the full restore again with the
// fallback that needs only the AWS CLI, zstd and etcdutl. After each, the API server
// serves exactly what the snapshot held.
func TestE2ERunbook(t *testing.T) {
	blocks := readRunbook(t)
	text := ""
	for _, b := range blocks {
		text += b.script
	}
	for _, v := range []string{runbookSnapshot, runbookToken, runbookStore} {
		if !strings.Contains(text, v) {
			t.Fatalf("restore.md no longer has the example value %q that the test replaces", v)
		}
	}
	c := startRunbookCluster(t)
	storeURL := c.s3.URL("etcd")

	// The cluster holds two teams' objects; the daemons back it up.
	c.createConfigMaps(t, "team-a", 4)
	c.createConfigMaps(t, "team-b", 4)
	snap1 := c.waitSnapshot(t, c.revision(t), "")
	// The outage: team-a's configmaps are deleted; more is written after.
	c.deleteConfigMaps(t, "team-a")
	c.createConfigMaps(t, "after-1", 2)
	oldRV := c.revision(t)
	t.Logf("restoring snapshot %s (revision %d); the old cluster is at %d", snap1.ID, snap1.Revision, oldRV)

	values := strings.NewReplacer(runbookSnapshot, snap1.ID, runbookToken, "etcd-restore-one", runbookStore, storeURL)
	c.follow(t, section(t, blocks, "0.", "1.", "2.", "3.", "4.", "5.", "6.", "7.", "8.", "9."), values)
	c.waitAPI(t)
	if got := c.configMaps(t, "team-a"); len(got) != 4 {
		t.Errorf("after the restore team-a has configmaps %v, want the 4 of the snapshot", got)
	}
	if got := c.configMaps(t, "team-b"); len(got) != 4 {
		t.Errorf("after the restore team-b has configmaps %v, want 4", got)
	}
	if got := c.configMaps(t, "after-1"); len(got) != 0 {
		t.Errorf("after the restore after-1 has configmaps %v written after the snapshot", got)
	}
	if rv := c.revision(t); rv <= oldRV {
		t.Errorf("the restored cluster hands out resourceVersion %d, not above the old cluster's %d", rv, oldRV)
	}
	for _, m := range c.masters {
		if old, _ := filepath.Glob(filepath.Join(m.root, "var/lib/etcd.before-restore-*")); len(old) != 1 {
			t.Errorf("%s: the old data dir was not kept aside: %v", m.name, old)
		}
		m.waitDaemonReady(t)
	}
	snap2 := c.waitSnapshot(t, c.revision(t), snap1.History)
	t.Logf("the new history %s has snapshot %s at revision %d", snap2.History, snap2.ID, snap2.Revision)
	if t.Failed() {
		return
	}

	// One member lost: m1's disk is gone. kubelet starts its etcd again on an empty dir,
	// which (first master: --initial-cluster of itself, state new) makes a cluster of its
	// own, served by m1's API server; the others go on, written through m2's.
	m1, m2 := c.masters[0], c.masters[1]
	if err := os.RemoveAll(filepath.Join(m1.root, "var/lib/etcd")); err != nil {
		t.Fatal(err)
	}
	crictl := filepath.Join(m1.kubelet.CrictlDir, "crictl")
	id := strings.TrimSpace(string(must(exec.Command(crictl, "ps", "--name", "^etcd$", "-q").Output())))
	must(exec.Command(crictl, "rm", "-f", id).Output())
	c.cs = m2.cs
	c.createConfigMaps(t, "during-loss", 3)
	for _, m := range c.masters { // new shells: the section says which steps to run first
		m.newShell(t)
	}
	c.follow(t, section(t, blocks, "1.", "3.", "One member lost"), values)
	c.cs = m1.cs
	c.waitAPI(t)
	c.createConfigMaps(t, "after-replace", 1)
	if got := c.configMaps(t, "during-loss"); len(got) != 3 {
		t.Errorf("m1's API server serves during-loss configmaps %v after the replacement, want the 3 written while m1 was lost", got)
	}
	out := runTool(t, c.etcdctlEnv(m1), "etcdctl", "get", "/registry/configmaps/after-replace/cm-0", "--consistency=s", "--keys-only")
	if !strings.Contains(out, "after-replace/cm-0") {
		t.Errorf("the replaced m1 does not serve what was written after it joined: %q", out)
	}
	members := runTool(t, c.etcdctlEnv(m1), "etcdctl", "member", "list")
	if strings.Count(members, ", started, ") != 3 || strings.Count(members, ", false") != 3 {
		t.Errorf("after the replacement the members are not three started voters:\n%s", members)
	}
	m1.waitDaemonReady(t)
	if t.Failed() {
		return
	}

	// The fallback: another outage, restored with only the AWS CLI, zstd and etcdutl.
	snap3 := c.waitSnapshot(t, c.revision(t), "")
	c.deleteConfigMaps(t, "team-b")
	c.createConfigMaps(t, "after-2", 2)
	oldRV = c.revision(t)
	values = strings.NewReplacer(runbookSnapshot, snap3.ID, runbookToken, "etcd-restore-two", runbookStore, storeURL)
	for _, m := range c.masters { // etcdguard is not on these masters any more
		m.env[0] = strings.Replace(m.env[0], "PATH=", "PATH="+filepath.Join(m.root, "no-etcdguard")+":", 1)
		if err := os.MkdirAll(filepath.Join(m.root, "no-etcdguard"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(m.root, "no-etcdguard", "etcdguard"), []byte("#!/bin/sh\necho etcdguard cannot run >&2\nexit 127\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Steps 1 to 5 with the fallback's choice of snapshot, its restore for step 6, then
	// steps 7, 8 and the first block of 9, as the fallback section says.
	fallback := section(t, blocks, "Fallback")
	c.follow(t, section(t, blocks, "1."), values)
	c.follow(t, section(t, blocks, "2.")[:1], values)
	c.follow(t, section(t, blocks, "3."), values)
	c.follow(t, fallback[:1], values)
	c.follow(t, section(t, blocks, "4.", "5."), values)
	c.follow(t, fallback[1:], values)
	c.follow(t, section(t, blocks, "7.", "8."), values)
	c.follow(t, section(t, blocks, "9.")[:1], values)
	c.waitAPI(t)
	for _, m := range c.masters {
		m.waitDaemonReady(t)
	}
	if got := c.configMaps(t, "team-b"); len(got) != 4 {
		t.Errorf("after the fallback restore team-b has configmaps %v, want the 4 of the snapshot", got)
	}
	if got := c.configMaps(t, "after-2"); len(got) != 0 {
		t.Errorf("after the fallback restore after-2 has configmaps %v written after the snapshot", got)
	}
	if got := c.configMaps(t, "during-loss"); len(got) != 3 {
		t.Errorf("after the fallback restore during-loss has configmaps %v, want the 3 of the snapshot", got)
	}
	if rv := c.revision(t); rv <= oldRV {
		t.Errorf("the cluster restored by the fallback hands out resourceVersion %d, not above the old cluster's %d", rv, oldRV)
	}
	snap4 := c.waitSnapshot(t, c.revision(t), snap3.History)
	t.Logf("after the fallback the daemon snapshotted the new history %s: %s at revision %d", snap4.History, snap4.ID, snap4.Revision)
}

func runTool(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(testharness.Bin(t, name), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}
