package testharness

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// KubeadmPKI is an etcd PKI laid out as kubeadm writes it under /etc/kubernetes/pki:
// etcd/ca.crt, etcd/server.{crt,key}, etcd/peer.{crt,key}, etcd/healthcheck-client.{crt,key},
// the API server's apiserver-etcd-client.{crt,key} and its serving apiserver.{crt,key}
// (all from one CA here, where kubeadm has a second one for the API server).
type KubeadmPKI struct {
	Dir string // the pki dir
	TLSFiles
	APIServerCert, APIServerKey string
}

// The CNs of kubeadm's etcd client certificates.
const (
	KubeadmHealthcheckCN = "kube-etcd-healthcheck-client"
	KubeadmAPIServerCN   = "kube-apiserver-etcd-client"
)

// GenerateKubeadmPKI writes a fresh etcd CA and certificates in kubeadm's layout, the
// server certificates valid for 127.0.0.1 and ips.
func GenerateKubeadmPKI(t testing.TB, ips ...string) *KubeadmPKI {
	t.Helper()
	f := GenerateTLS(t, ips...)
	dir := filepath.Join(t.TempDir(), "pki")
	if err := os.MkdirAll(filepath.Join(dir, "etcd"), 0o700); err != nil {
		t.Fatal(err)
	}
	link := func(from, to string) string {
		to = filepath.Join(dir, to)
		if err := os.Link(from, to); err != nil {
			t.Fatal(err)
		}
		return to
	}
	p := &KubeadmPKI{Dir: dir}
	p.CACert = link(f.CACert, "etcd/ca.crt")
	p.ServerCert, p.ServerKey = link(f.ServerCert, "etcd/server.crt"), link(f.ServerKey, "etcd/server.key")
	p.CAKey = link(f.CAKey, "etcd/ca.key")
	// The client certificates carry kubeadm's CNs: with etcd auth enabled, the CN is the
	// etcd user a certificate acts as.
	p.ClientCert, p.ClientKey = f.IssueClientCert(t, filepath.Join(dir, "etcd"), "healthcheck-client", KubeadmHealthcheckCN)
	p.APIServerCert, p.APIServerKey = f.IssueClientCert(t, dir, "apiserver-etcd-client", KubeadmAPIServerCN)
	link(f.ServerCert, "etcd/peer.crt")
	link(f.ServerKey, "etcd/peer.key")
	link(f.CACert, "ca.crt")
	link(f.ServerCert, "apiserver.crt")
	link(f.ServerKey, "apiserver.key")
	return p
}

// EtcdTLSArgs are the etcd flags kubeadm's manifest sets for client TLS.
func (p *KubeadmPKI) EtcdTLSArgs() []string {
	return []string{"--cert-file", p.ServerCert, "--key-file", p.ServerKey, "--client-cert-auth", "--trusted-ca-file", p.CACert}
}

// EtcdctlArgs are the TLS flags for etcdctl and etcdguard, as an operator on a kubeadm
// master gives them.
func (p *KubeadmPKI) EtcdctlArgs() []string {
	return []string{"--cacert", p.CACert, "--cert", p.ClientCert, "--key", p.ClientKey}
}

// KubeAPIServer is a real kube-apiserver (bin/kube-apiserver) on loopback.
type KubeAPIServer struct {
	URL, Token, Prefix string
	LogPath            string
	cmd                *exec.Cmd
	done               chan struct{}
}

// StartKubeAPIServer starts a kube-apiserver storing under prefix in the etcd at endpoints
// (client TLS from pki), and waits until it is ready.
func StartKubeAPIServer(t testing.TB, endpoints []string, pki *KubeadmPKI, prefix string) *KubeAPIServer {
	t.Helper()
	bin := Bin(t, "kube-apiserver")
	dir := t.TempDir()
	token := randHex(16)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	saPriv := writePEM(t, dir, "sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	saPub := writePEM(t, dir, "sa.pub", "PUBLIC KEY", pub)
	var lastErr error
	for range startAttempts {
		port := FreePorts(t, 1)[0]
		k := &KubeAPIServer{URL: fmt.Sprintf("https://127.0.0.1:%d", port), Token: token, Prefix: prefix,
			LogPath: filepath.Join(dir, fmt.Sprintf("kube-apiserver-%d.log", port)), done: make(chan struct{})}
		logf, err := os.Create(k.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		k.cmd = exec.Command(bin,
			"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
			"--endpoint-reconciler-type", "none", "--cert-dir", filepath.Join(dir, "certs"),
			"--token-auth-file", tokens, "--authorization-mode", "AlwaysAllow",
			"--service-account-key-file", saPub, "--service-account-signing-key-file", saPriv,
			"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
			"--service-cluster-ip-range", "10.96.0.0/12",
			"--etcd-servers", strings.Join(endpoints, ","), "--etcd-prefix", prefix,
			"--etcd-cafile", pki.CACert, "--etcd-certfile", pki.APIServerCert, "--etcd-keyfile", pki.APIServerKey,
			"--enable-priority-and-fairness=false", "--profiling=false", "--v=1")
		k.cmd.SysProcAttr = killWithParent()
		k.cmd.Stdout, k.cmd.Stderr = logf, logf
		if err := k.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { k.cmd.Wait(); logf.Close(); close(k.done) }()
		t.Cleanup(func() {
			k.Stop()
			if t.Failed() {
				t.Logf("kube-apiserver log tail:\n%s", tail(k.LogPath))
			}
		})
		if lastErr = k.waitReady(90 * time.Second); lastErr == nil {
			return k
		}
		k.Stop()
		if !strings.Contains(tail(k.LogPath), "address already in use") {
			break
		}
	}
	t.Fatalf("kube-apiserver did not become ready: %v\n%s", lastErr, "see the log tail above")
	return nil
}

func (k *KubeAPIServer) waitReady(timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-k.done:
			return fmt.Errorf("kube-apiserver exited:\n%s", tail(k.LogPath))
		default:
		}
		req, _ := http.NewRequest(http.MethodGet, k.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.Token)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s:\n%s", timeout, tail(k.LogPath))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop stops the API server (SIGTERM, then SIGKILL) and waits for it.
func (k *KubeAPIServer) Stop() {
	if k.cmd != nil && k.cmd.Process != nil {
		stopProcess(k.cmd.Process, k.done, os.Interrupt)
	}
}

// Client returns a client-go clientset for the API server, as cluster admin.
func (k *KubeAPIServer) Client(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: k.URL, BearerToken: k.Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 200, Burst: 400, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
