package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	mathrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	s3store "github.com/etcdguard/etcdguard/store/s3"
)

// TestStaticPodOnKubeadmMaster runs deploy/static-pod.yaml as kubelet would on a kubeadm
// master (the kubelet stand-in: exactly the manifest's command, env and mounts, the node's
// paths mapped to temp dirs) with deploy/config.example.yaml, against a TLS etcd laid out
// as kubeadm lays it out and MinIO reached by IP. The S3 keys come only from the mounted
// credentials file: the process gets no AWS_* variable but the manifest's. It checks that
// /metrics answers where Prometheus scrapes the pod (node IP, port "metrics"), that the
// probes' port serves /healthz and /readyz, and that a snapshot lands in the store. The
// store holds only a snapshot from 10 hours ago at first (the last backup before etcdguard
// was redeployed), so the pod must page EtcdSnapshotTooOld through a real Alertmanager
// (reached by IP), then resolve it once its own snapshot is stored.
func TestStaticPodOnKubeadmMaster(t *testing.T) {
	pod := readStaticPod(t)
	c := pod.Spec.Containers[0]

	// The node: its IP and its own loopback become random loopback addresses here, so
	// the manifest's fixed ports (2379, 9479) meet nothing else on this machine.
	net := 1 + mathrand.IntN(250)
	nodeIP, nodeLoopback := fmt.Sprintf("127.%d.20.2", net), fmt.Sprintf("127.%d.20.1", net)
	pki := testharness.GenerateKubeadmPKI(t, nodeLoopback, nodeIP)
	peer := testharness.FreePorts(t, 1)[0]
	etcd := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "m1", DataDir: filepath.Join(t.TempDir(), "m1.etcd"),
		ClientURL: "https://" + nodeLoopback + ":2379", PeerURL: fmt.Sprintf("http://127.0.0.1:%d", peer), ExtraArgs: pki.EtcdTLSArgs()})
	waitTLS(t, pki, []string{etcd.Endpoint()})
	s3 := testharness.StartMinIO(t)
	if !strings.HasPrefix(s3.Endpoint, "http://127.0.0.1:") {
		t.Fatalf("MinIO at %s: the test needs it at an IP address", s3.Endpoint)
	}
	// Alertmanager by IP too. An empty store would page nothing for 75 minutes
	// (EtcdSnapshotMissing's For); a stale snapshot pages at the first check.
	am := testharness.StartAlertmanager(t, 5*time.Minute)
	if !strings.HasPrefix(am.URL, "http://127.0.0.1:") {
		t.Fatalf("Alertmanager at %s: the test needs it at an IP address", am.URL)
	}
	stale := seedStaleSnapshot(t, s3, "etcd", "prod-eu1", 10*time.Hour)

	host := t.TempDir() // the node's /
	hostPath := strings.NewReplacer("/etc/kubernetes", host+"/etc/kubernetes", "/etc/etcdguard", host+"/etc/etcdguard").Replace
	if err := os.CopyFS(hostPath("/etc/kubernetes/pki"), os.DirFS(pki.Dir)); err != nil {
		t.Fatal(err)
	}
	// What kubeadm leaves there and the pod must not see.
	if err := os.WriteFile(hostPath("/etc/kubernetes/pki/etcd/ca.key"), []byte("the etcd CA's key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The daemon reads the config's paths inside the container: here they are where the
	// pod's mounts put them, and a path outside every mount fails the test.
	config := staticPodConfig(t, s3, am.URL, nodeIP)
	writeHostFile(t, hostPath("/etc/etcdguard/config.yaml"), containerPaths(t, pod, hostPath, config))
	writeHostFile(t, hostPath("/etc/etcdguard/aws/credentials"),
		fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s3.AccessKey, s3.SecretKey))

	addr := strings.NewReplacer("https://127.0.0.1:2379", etcd.Endpoint(), "0.0.0.0", nodeIP).Replace
	testharness.StartKubelet(t, testharness.KubeletOptions{
		Node: "m1", Manifests: installManifest(t),
		Path: hostPath,
		Addr: addr,
		Binary: func(image, command string) string {
			return map[string]string{c.Image + " /etcdguard": etcdguardBin}[image+" "+command]
		},
	})

	metricsPort := -1
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = int(p.ContainerPort)
		}
	}
	if metricsPort < 0 {
		t.Fatal("the pod has no port named metrics for a PodMonitor to scrape")
	}
	// hostNetwork: the pod IP, which Prometheus scrapes and kubelet probes, is the node IP.
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if probe.HTTPGet.Host != "" || probe.HTTPGet.Port.IntValue() != metricsPort {
			t.Errorf("probe %s on %s:%s, not on the pod IP at the metrics port %d", probe.HTTPGet.Path, probe.HTTPGet.Host, probe.HTTPGet.Port.String(), metricsPort)
		}
	}
	base := fmt.Sprintf("http://%s:%d", nodeIP, metricsPort)
	waitBody(t, base+c.ReadinessProbe.HTTPGet.Path, "ready\n")
	waitBody(t, base+c.LivenessProbe.HTTPGet.Path, "")

	// A snapshot of the pod's own lands in the store, and /metrics says so.
	deadline := time.Now().Add(90 * time.Second)
	for {
		r := run(t, s3.Env(), "snapshot", "list", "--store", s3.URL("etcd"), "--cluster", "prod-eu1", "-o", "json")
		var snaps []snapshot.Manifest
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &snaps) == nil && slices.ContainsFunc(snaps, func(m snapshot.Manifest) bool { return m.ID != stale }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot in the store after 90s: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		time.Sleep(time.Second)
	}
	// The leader's metrics, where Prometheus scrapes them, show the snapshot.
	saved := regexp.MustCompile(`(?m)^etcdguard_snapshot_last_success_timestamp_seconds(\{[^}]*\})? [1-9]`)
	leader := regexp.MustCompile(`(?m)^etcdguard_is_leader(\{[^}]*\})? 1$`)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		metrics := waitBody(t, base+"/metrics", "")
		if saved.MatchString(metrics) && leader.MatchString(metrics) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/metrics shows no saved snapshot of the leader:\n%.3000s", base, metrics)
		}
	}
	checkStaleAlert(t, am, "prod-eu1")
}

// seedStaleSnapshot stores a snapshot of cluster, age old, under prefix in s3, as etcdguard
// would have (manifest and object; the object need not restore), and returns its ID.
func seedStaleSnapshot(t *testing.T, s3 *testharness.S3Server, prefix, cluster string, age time.Duration) string {
	t.Helper()
	st := s3store.NewFromClient(s3.Client(t), s3.Bucket, prefix, s3.Options())
	created := time.Now().Add(-age).UTC()
	m := snapshot.Manifest{ID: created.Format("20060102T150405Z") + "-5ea1ed", Cluster: cluster, CreatedAt: created, CompletedAt: created}
	m.Object = cluster + "/snapshots/" + m.ID + ".db"
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for key, data := range map[string][]byte{m.Object: []byte("an old snapshot"), cluster + "/snapshots/" + m.ID + ".json": b} {
		if err := store.PutBytes(context.Background(), st, key, data); err != nil {
			t.Fatalf("seeding %s: %v", key, err)
		}
	}
	return m.ID
}

// checkStaleAlert asserts that EtcdSnapshotTooOld (critical) of cluster reached
// Alertmanager with the daemon's labels and the rule's annotations, was resolved once a snapshot landed
// (the caller waited for one), and that nothing else reached it.
func checkStaleAlert(t *testing.T, am *testharness.AlertmanagerServer, cluster string) {
	t.Helper()
	const name = "EtcdSnapshotTooOld"
	want := map[string]string{"alertname": name, "cluster": cluster, "severity": "critical", "source": "etcdguard"}
	// Alertmanager flushes a group within a second or so (group_wait, group_interval).
	for deadline := time.Now().Add(15 * time.Second); am.Notified(name, "firing") == 0 || am.Notified(name, "resolved") == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("want %s fired and then resolved by the snapshot; Alertmanager notified %q and lists %+v", name, am.Notifications(), am.Alerts(t))
		}
	}
	got := am.Received(name)
	if got[0].Status != "firing" {
		t.Errorf("the first %s notification is %s, want firing: %+v", name, got[0].Status, got)
	}
	for _, n := range got {
		if !maps.Equal(n.Labels, want) || n.Annotations["summary"] != alerting.SnapshotTooOld.Summary ||
			n.Annotations["runbook_url"] != alerting.SnapshotTooOld.RunbookURL() || !strings.Contains(n.Annotations["description"], "too old") {
			t.Errorf("%s %s with labels %v and annotations %v; want labels %v and the rule's summary, runbook_url and a description", name, n.Status, n.Labels, n.Annotations, want)
		}
	}
	if n := am.Notified(name, "firing"); n != 1 {
		t.Errorf("%s notified firing %d times, want once: %q", name, n, am.Notifications())
	}
	// Nothing else paged, and nothing is left active.
	for _, n := range strings.Split(am.Notifications(), ", ") {
		if n != name+" firing" && n != name+" resolved" {
			t.Errorf("Alertmanager notified %s too: %q", n, am.Notifications())
		}
	}
	for _, a := range am.Alerts(t) {
		if a.Status.State == "active" {
			t.Errorf("Alertmanager still lists an active alert after the snapshot: %+v", a)
		}
	}
}

func readStaticPod(t *testing.T) corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testharness.RepoRoot(t), "deploy", "static-pod.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		t.Fatalf("deploy/static-pod.yaml does not decode strictly into a v1 Pod: %v", err)
	}
	return pod
}

// installManifest copies the shipped manifest, unchanged, into a manifests dir.
func installManifest(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testharness.RepoRoot(t), "deploy", "static-pod.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeHostFile(t, filepath.Join(dir, "etcdguard.yaml"), string(b))
	return dir
}

// staticPodConfig is deploy/config.example.yaml with the store, its endpoint and the
// Alertmanager given as IPs here, no KMS, a schedule and checks a test can wait for. "Every address
// of the node" (0.0.0.0) becomes the node IP, which is where it is scraped.
func staticPodConfig(t *testing.T, s3 *testharness.S3Server, am, nodeIP string) string {
	t.Helper()
	cfg := exampleConfig(t, map[string]any{"store": s3.URL("etcd"), "s3-region": s3.Region, "s3-sse": nil,
		"alert-alertmanager": []string{am}, "schedule": "@every 5s",
		// The stale store must page before a snapshot clears it: caught up at election, it
		// never would (TestCatchUp covers that).
		"catch-up": false})
	if l, _ := cfg["listen"].(string); !strings.HasPrefix(l, "0.0.0.0:") {
		t.Fatalf("config.example.yaml listens on %q, not on every address of the node", l)
	}
	cfg["listen"] = strings.Replace(cfg["listen"].(string), "0.0.0.0", nodeIP, 1)
	cfg["s3-endpoint"], cfg["s3-path-style"] = s3.Endpoint, true
	// A daemon sends the alerts it holds once it checks again after its election (a check
	// while it campaigns sees its own candidacy as a leader and stays quiet): every second
	// here, so a stale store pages well before the first scheduled snapshot.
	cfg["check-interval"] = "1s"
	return marshalConfig(t, cfg)
}

func writeHostFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitBody waits up to a minute for a 200 from url (with body want, unless empty) and
// returns the body.
func waitBody(t *testing.T, url, want string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && (want == "" || string(body) == want) {
				return string(body)
			}
			err = fmt.Errorf("%s: %.200q", resp.Status, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer after a minute: %v", url, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// containerPaths maps the absolute paths in a config (the values of its keys) from where
// the container sees them to where the pod's hostPath mounts have them here.
func containerPaths(t *testing.T, pod corev1.Pod, hostPath func(string) string, config string) string {
	t.Helper()
	cfg := map[string]any{}
	if err := yaml.Unmarshal([]byte(config), &cfg); err != nil {
		t.Fatal(err)
	}
	for k, v := range cfg {
		p, ok := v.(string)
		if !ok || !strings.HasPrefix(p, "/") {
			continue
		}
		best := ""
		for _, m := range pod.Spec.Containers[0].VolumeMounts {
			i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
			if i < 0 || pod.Spec.Volumes[i].HostPath == nil || len(m.MountPath) <= len(best) {
				continue
			}
			if p == m.MountPath || strings.HasPrefix(p, m.MountPath+"/") {
				best = m.MountPath
				cfg[k] = hostPath(pod.Spec.Volumes[i].HostPath.Path) + strings.TrimPrefix(p, m.MountPath)
			}
		}
		if best == "" {
			t.Fatalf("the config's %s: %s is on no hostPath mount of the pod: the container cannot read it", k, p)
		}
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
