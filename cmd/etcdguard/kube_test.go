package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store/file"
)

// kubeCluster is a single-member etcd with client TLS as kubeadm sets it up, and a real
// kube-apiserver storing under /registry-kube-1 (the outage's prefix) on it.
type kubeCluster struct {
	pki  *testharness.KubeadmPKI
	etcd *testharness.EtcdProc
	api  *testharness.KubeAPIServer
	cs   *kubernetes.Clientset
}

func startKubeCluster(t *testing.T) *kubeCluster {
	t.Helper()
	pki := testharness.GenerateKubeadmPKI(t)
	ports := testharness.FreePorts(t, 2)
	etcd := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "m1", DataDir: filepath.Join(t.TempDir(), "m1.etcd"),
		ClientURL: fmt.Sprintf("https://127.0.0.1:%d", ports[0]), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		ExtraArgs: pki.EtcdTLSArgs()})
	waitTLS(t, pki, []string{etcd.Endpoint()})
	api := testharness.StartKubeAPIServer(t, []string{etcd.Endpoint()}, pki, "/registry-kube-1")
	return &kubeCluster{pki: pki, etcd: etcd, api: api, cs: api.Client(t)}
}

// etcdguard returns the global flags an operator on the master gives.
func (k *kubeCluster) etcdguard(storeURL string, args ...string) []string {
	return append(append(append([]string{}, args...), "--endpoints", k.etcd.Endpoint(), "--store", storeURL, "--cluster", "prod"), k.pki.EtcdctlArgs()...)
}

// populate creates, through the API, what a small cluster holds.
func (k *kubeCluster) populate(t *testing.T, namespaces []string, perNS int) {
	t.Helper()
	ctx := context.Background()
	for _, ns := range namespaces {
		must(k.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
		for i := range perNS {
			name := fmt.Sprintf("cm-%d", i)
			must(k.cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name},
				Data: map[string]string{"key": ns + "/" + name}}, metav1.CreateOptions{}))
			must(k.cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("secret-%d", i)},
				StringData: map[string]string{"password": "p" + name}}, metav1.CreateOptions{}))
		}
		labels := map[string]string{"app": "web"}
		must(k.cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}}}}}, metav1.CreateOptions{}))
	}
	for i := range 3 {
		key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
		der := must(x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: fmt.Sprintf("user-%d", i)}}, key))
		must(k.cs.CertificatesV1().CertificateSigningRequests().Create(ctx, &certv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("csr-%d", i)},
			Spec: certv1.CertificateSigningRequestSpec{Request: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
				SignerName: "kubernetes.io/kube-apiserver-client", Usages: []certv1.KeyUsage{certv1.UsageClientAuth}}}, metav1.CreateOptions{}))
	}
}

// apiCounts is what the API serves, per resource type, across namespaces.
func (k *kubeCluster) apiCounts(t *testing.T) map[string]int {
	t.Helper()
	ctx, all := context.Background(), metav1.ListOptions{}
	return map[string]int{
		"namespaces":                 len(must(k.cs.CoreV1().Namespaces().List(ctx, all)).Items),
		"configmaps":                 len(must(k.cs.CoreV1().ConfigMaps("").List(ctx, all)).Items),
		"secrets":                    len(must(k.cs.CoreV1().Secrets("").List(ctx, all)).Items),
		"deployments":                len(must(k.cs.AppsV1().Deployments("").List(ctx, all)).Items),
		"certificatesigningrequests": len(must(k.cs.CertificatesV1().CertificateSigningRequests().List(ctx, all)).Items),
	}
}

// waitConfigMaps waits until the API serves n configmaps in ns (its watch cache follows
// etcd a moment behind).
func (k *kubeCluster) waitConfigMaps(t *testing.T, ns string, n int) *corev1.ConfigMapList {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		l := must(k.cs.CoreV1().ConfigMaps(ns).List(context.Background(), metav1.ListOptions{}))
		if len(l.Items) == n {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API serves %d configmaps in %s, want %d", len(l.Items), ns, n)
		}
	}
}

// The outage, replayed against a real API server: its command is refused and deletes
// nothing, and its dry run counts per resource type what the API lists; a guarded delete
// of one namespace's configmaps disappears from the API, and undo brings them back there.
func TestE2EKubeGuard(t *testing.T) {
	k := startKubeCluster(t)
	k.populate(t, []string{"team-a", "team-b"}, 4)
	storeURL := "file://" + t.TempDir()
	want := k.apiCounts(t)

	r := run(t, nil, k.etcdguard(storeURL, "del", "/registry-kube-1/certificatesigningrequest", "prefix")...)
	if r.code == 0 || !strings.Contains(r.stderr, "--dry-run") {
		t.Fatalf("the outage's command: exit %d, %q", r.code, r.stderr)
	}
	if got := k.apiCounts(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the refused command the API serves %v, before %v", got, want)
	}
	plan := decodeJSON[struct {
		PlanID   string         `json:"plan_id"`
		ByType   map[string]int `json:"by_type"`
		Warnings []string       `json:"warnings"`
	}](t, run(t, nil, k.etcdguard(storeURL, "del", "/registry-kube-1/certificatesigningrequest", "prefix", "--dry-run", "-o", "json")...))
	t.Logf("the API lists %v; the dry run counts %v with %d warnings", want, plan.ByType, len(plan.Warnings))
	for typ, n := range want {
		if plan.ByType[typ] != n {
			t.Errorf("the dry run counts %d %s, the API lists %d", plan.ByType[typ], typ, n)
		}
	}
	if len(plan.Warnings) == 0 {
		t.Error("the outage's range gets no warning")
	}

	before := k.waitConfigMaps(t, "team-a", 4)
	p := decodeJSON[struct {
		PlanID string `json:"plan_id"`
	}](t, run(t, nil, k.etcdguard(storeURL, "del", "/registry-kube-1/configmaps/team-a/", "--prefix", "--dry-run", "-o", "json")...))
	if r := run(t, nil, k.etcdguard(storeURL, "del", "--confirm", p.PlanID, "--accept-warnings")...); r.code != 0 {
		t.Fatalf("confirm: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	k.waitConfigMaps(t, "team-a", 0)
	k.waitConfigMaps(t, "team-b", 4)
	if r := run(t, nil, k.etcdguard(storeURL, "guard", "undo", p.PlanID)...); r.code != 0 {
		t.Fatalf("undo: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	after := k.waitConfigMaps(t, "team-a", 4)
	for i, cm := range after.Items {
		if cm.Name != before.Items[i].Name || cm.Data["key"] != before.Items[i].Data["key"] || cm.UID != before.Items[i].UID {
			t.Errorf("configmap %s came back as %s %v (uid %s), was %v (uid %s)", before.Items[i].Name, cm.Name, cm.Data, cm.UID, before.Items[i].Data, before.Items[i].UID)
		}
	}
}

// waitTLS waits until a TLS etcd at endpoints serves a linearizable read.
func waitTLS(t *testing.T, pki *testharness.KubeadmPKI, endpoints []string) {
	t.Helper()
	tlsCfg, err := transport.TLSInfo{CertFile: pki.ClientCert, KeyFile: pki.ClientKey, TrustedCAFile: pki.CACert}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli := must(clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second}))
	defer cli.Close()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd %v not serving after 60s: %v", endpoints, err)
		}
	}
}

// A snapshot taken while the API server writes, restored into a fresh 3-member cluster
// with --bump-revision --mark-compacted, serves through a new API server every object of
// the snapshot and none written after it; every resourceVersion is above any the old
// cluster handed out, and a watch from an old one gets 410 Gone, so informers re-list
// instead of missing events.
func TestE2EKubeRestore(t *testing.T) {
	ctx := context.Background()
	k := startKubeCluster(t)
	k.populate(t, []string{"team-a"}, 3)
	must(k.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "churn"}}, metav1.CreateOptions{}))
	storeURL := "file://" + t.TempDir()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { // the API server keeps writing during the snapshot
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k.cs.CoreV1().ConfigMaps("churn").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("during-%d", i)}}, metav1.CreateOptions{})
		}
	}()
	time.Sleep(500 * time.Millisecond)
	snap := decodeJSON[struct {
		ID       string `json:"id"`
		Revision int64  `json:"revision"`
	}](t, run(t, nil, k.etcdguard(storeURL, "snapshot", "save", "-o", "json")...))
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-done
	for i := range 5 {
		must(k.cs.CoreV1().ConfigMaps("churn").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("after-%d", i)}}, metav1.CreateOptions{}))
	}
	old := must(k.cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{}))
	oldRV := must(strconv.ParseInt(old.ResourceVersion, 10, 64))
	inSnapshot := map[string]bool{}
	var after int
	for _, cm := range old.Items {
		rv := must(strconv.ParseInt(cm.ResourceVersion, 10, 64))
		if rv <= snap.Revision {
			inSnapshot[cm.Namespace+"/"+cm.Name] = true
		} else {
			after++
		}
	}
	t.Logf("snapshot %s at revision %d holds %d configmaps; %d were written after it; the old cluster handed out resourceVersion %d",
		snap.ID, snap.Revision, len(inSnapshot), after, oldRV)
	if after < 6 || len(inSnapshot) < 5 {
		t.Fatalf("%d configmaps in the snapshot, %d after it: the test needs both", len(inSnapshot), after)
	}
	k.api.Stop()
	k.etcd.Stop()

	ports := testharness.FreePorts(t, 6)
	var peers, clients []string
	for i := range 3 {
		peers = append(peers, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
		clients = append(clients, fmt.Sprintf("https://127.0.0.1:%d", ports[2*i]))
	}
	dataDir := filepath.Join(t.TempDir(), "restored")
	r := run(t, nil, "restore", "--store", storeURL, "--cluster", "prod", "--snapshot", snap.ID, "--all-members", "--data-dir", dataDir,
		"--initial-cluster", strings.Join(peers, ","), "--bump-revision", "1000000", "--mark-compacted")
	if r.code != 0 {
		t.Fatalf("restore: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for i := range 3 {
		testharness.StartEtcdProc(t, testharness.ProcConfig{Name: fmt.Sprintf("m%d", i), DataDir: filepath.Join(dataDir, fmt.Sprintf("m%d.etcd", i)),
			ClientURL: clients[i], PeerURL: strings.SplitN(peers[i], "=", 2)[1], InitialCluster: strings.Join(peers, ","), ExtraArgs: k.pki.EtcdTLSArgs()})
	}
	waitTLS(t, k.pki, clients)
	api := testharness.StartKubeAPIServer(t, clients, k.pki, "/registry-kube-1")
	cs := api.Client(t)

	restored := must(cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{}))
	got := map[string]bool{}
	for _, cm := range restored.Items { // objects keep their own resourceVersions
		got[cm.Namespace+"/"+cm.Name] = true
	}
	for name := range inSnapshot {
		if !got[name] {
			t.Errorf("configmap %s was in the snapshot and is not served", name)
		}
	}
	for name := range got {
		if !inSnapshot[name] {
			t.Errorf("configmap %s is served but was written after the snapshot", name)
		}
	}
	// What the new cluster hands out is above anything the old one did.
	if rv := must(strconv.ParseInt(restored.ResourceVersion, 10, 64)); rv <= oldRV {
		t.Errorf("the restored list's resourceVersion %d is not above the old cluster's %d", rv, oldRV)
	}
	created := must(cs.CoreV1().ConfigMaps("churn").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "new"}}, metav1.CreateOptions{}))
	if rv := must(strconv.ParseInt(created.ResourceVersion, 10, 64)); rv <= oldRV {
		t.Errorf("a configmap created after the restore has resourceVersion %d, not above the old cluster's %d", rv, oldRV)
	}
	w, err := cs.CoreV1().ConfigMaps("churn").Watch(ctx, metav1.ListOptions{ResourceVersion: old.ResourceVersion})
	if err != nil {
		if !apierrors.IsGone(err) && !apierrors.IsResourceExpired(err) {
			t.Fatalf("watch from the old resourceVersion %s: %v, want 410 Gone", old.ResourceVersion, err)
		}
		return
	}
	defer w.Stop()
	select {
	case ev := <-w.ResultChan():
		status, ok := ev.Object.(*metav1.Status)
		if ev.Type != watch.Error || !ok || status.Code != http.StatusGone {
			t.Fatalf("watch from the old resourceVersion %s sent %s %v, want 410 Gone", old.ResourceVersion, ev.Type, ev.Object)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("watch from the old resourceVersion %s sent nothing in 20s, want 410 Gone", old.ResourceVersion)
	}
}

// A namespace deleted through the API at T while the daemon captures deltas: `restore --at`
// a second before T brings the namespace and its objects back in a new API server, and
// nothing written after T.
func TestE2EKubePointInTime(t *testing.T) {
	ctx := context.Background()
	k := startKubeCluster(t)
	dir := t.TempDir()
	st := must(file.Open(dir))
	storeURL := "file://" + dir
	startDaemon(t, nil, "", k.etcdguard(storeURL, "--schedule", "@every 1h", "--election-ttl", "3s", "--delta", "--delta-flush", "200ms")...)
	waitSnapshots(t, st, 1)
	k.populate(t, []string{"victim", "bystander"}, 4)
	want := k.waitConfigMaps(t, "victim", 4)
	time.Sleep(1200 * time.Millisecond)
	at := time.Now().UTC()
	time.Sleep(1200 * time.Millisecond)

	// What the namespace controller does for a deleted namespace: its objects go, then it.
	for _, del := range []func() error{
		func() error {
			return k.cs.CoreV1().ConfigMaps("victim").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		},
		func() error {
			return k.cs.CoreV1().Secrets("victim").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		},
		func() error { return k.cs.AppsV1().Deployments("victim").Delete(ctx, "web", metav1.DeleteOptions{}) },
		func() error { return k.cs.CoreV1().Namespaces().Delete(ctx, "victim", metav1.DeleteOptions{}) },
	} {
		if err := del(); err != nil {
			t.Fatal(err)
		}
	}
	ns := must(k.cs.CoreV1().Namespaces().Get(ctx, "victim", metav1.GetOptions{}))
	ns.Spec.Finalizers = nil
	must(k.cs.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}))
	later := must(k.cs.CoreV1().ConfigMaps("bystander").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "later"}}, metav1.CreateOptions{}))
	rev := must(strconv.ParseInt(later.ResourceVersion, 10, 64))
	deltatest.Stored(t, st, "prod", rev)

	ports := testharness.FreePorts(t, 2)
	peer, client := fmt.Sprintf("http://127.0.0.1:%d", ports[1]), fmt.Sprintf("https://127.0.0.1:%d", ports[0])
	dataDir := filepath.Join(t.TempDir(), "pitr.etcd")
	r := run(t, nil, "restore", "--store", storeURL, "--cluster", "prod", "--at", at.Add(-time.Second).Format(time.RFC3339Nano),
		"--name", "r", "--initial-cluster", "r="+peer, "--data-dir", dataDir, "--bump-revision", "1000000", "--mark-compacted")
	if r.code != 0 {
		t.Fatalf("restore --at: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, ClientURL: client, PeerURL: peer, ExtraArgs: k.pki.EtcdTLSArgs()})
	waitTLS(t, k.pki, []string{client})
	cs := testharness.StartKubeAPIServer(t, []string{client}, k.pki, "/registry-kube-1").Client(t)
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "victim", metav1.GetOptions{}); err != nil {
		t.Fatalf("the deleted namespace after restore --at: %v", err)
	}
	got := must(cs.CoreV1().ConfigMaps("victim").List(ctx, metav1.ListOptions{}))
	if len(got.Items) != len(want.Items) {
		t.Fatalf("restored %d configmaps in the deleted namespace, want %d", len(got.Items), len(want.Items))
	}
	for i, cm := range got.Items {
		if cm.UID != want.Items[i].UID || cm.Data["key"] != want.Items[i].Data["key"] {
			t.Errorf("configmap %s came back as %v (uid %s), was %v (uid %s)", cm.Name, cm.Data, cm.UID, want.Items[i].Data, want.Items[i].UID)
		}
	}
	if n := len(must(cs.CoreV1().Secrets("victim").List(ctx, metav1.ListOptions{})).Items); n != 4 {
		t.Errorf("restored %d secrets in the deleted namespace, want 4", n)
	}
	if _, err := cs.CoreV1().ConfigMaps("bystander").Get(ctx, "later", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a configmap written after the point asked is served: %v", err)
	}
}
