package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
)

func decodeJSON[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, r.stdout)
	}
	return v
}

type kv struct {
	value                 string
	create, mod, versions int64
}

func dump(t *testing.T, cli *clientv3.Client) map[string]kv {
	t.Helper()
	resp, err := cli.Get(context.Background(), "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]kv, len(resp.Kvs))
	for _, k := range resp.Kvs {
		out[string(k.Key)] = kv{string(k.Value), k.CreateRevision, k.ModRevision, k.Version}
	}
	return out
}

// The end-to-end path with real processes: etcd, the etcdguard binary, the
// versitygw S3 server, and etcd's own etcdutl to check and restore what was saved.
func TestE2ESaveVerifyRestoreWithEtcdutl(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	cluster := testharness.StartEtcdCluster(t, 1)
	src := cluster.Client(t)
	stats, err := loadgen.LoadK8sKeyspace(context.Background(), src, loadgen.Options{Keys: 4000, ValueSize: 2048, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	// Overwrite and delete some keys so revisions and versions are not all alike.
	for i := range 50 {
		if _, err := src.Put(context.Background(), fmt.Sprintf("/registry/leases/kube-system/l%d", i%5), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Delete(context.Background(), "/registry/namespaces/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	want := dump(t, src)

	env := append(srv.Env(), "ETCDCTL_ENDPOINTS=http://127.0.0.1:1,"+cluster.Endpoints()[0], "ETCDGUARD_STORE="+srv.URL("team/etcd"))
	r := run(t, env, "snapshot", "save", "-o", "json", "--dial-timeout", "1s", "--s3-part-size", "5MiB")
	m := decodeJSON[snapshot.Manifest](t, r)
	if !strings.Contains(r.stderr, "first healthy of 2 endpoints") || m.Endpoint != cluster.Endpoints()[0] {
		t.Errorf("save did not say which endpoint it used: endpoint %q, stderr %q", m.Endpoint, r.stderr)
	}
	if m.Revision <= stats.Revision || m.Cluster == "" || m.Cluster != m.ClusterID {
		t.Errorf("manifest: revision %d (load ended at %d), cluster %q id %q", m.Revision, stats.Revision, m.Cluster, m.ClusterID)
	}

	list := decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json"))
	if len(list) != 1 || list[0].ID != m.ID {
		t.Fatalf("list: %+v", list)
	}
	rep := decodeJSON[snapshot.VerifyReport](t, run(t, env, "snapshot", "verify", "latest", "-o", "json"))
	if !rep.OK || rep.SHA256 != m.SHA256 {
		t.Fatalf("verify: %+v", rep)
	}

	// Download and decompress it the way a person would, then ask etcdutl.
	obj, err := srv.Client(t).GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("team/etcd/" + m.Object)})
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(t.TempDir(), "snap.db")
	f, err := os.Create(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.ReadVerified(context.Background(), obj.Body, &m, f); err != nil {
		t.Fatal(err)
	}
	obj.Body.Close()
	f.Close()
	out, err := exec.Command(testharness.Bin(t, "etcdutl"), "snapshot", "status", dbPath, "-w", "json").Output()
	if err != nil {
		t.Fatalf("etcdutl snapshot status: %v", err)
	}
	var status struct {
		Revision  int64 `json:"revision"`
		TotalKey  int   `json:"totalKey"`
		TotalSize int64 `json:"totalSize"`
	}
	if err := json.Unmarshal(out, &status); err != nil {
		t.Fatalf("etcdutl output %q: %v", out, err)
	}
	if status.Revision != m.Revision || status.TotalKey != len(want) || status.TotalSize+32 != m.DBSize {
		t.Errorf("etcdutl says revision %d, %d keys, %d bytes; manifest %d, source has %d keys, db_size %d",
			status.Revision, status.TotalKey, status.TotalSize, m.Revision, len(want), m.DBSize)
	}

	// Restore with etcdutl, start a real etcd on it, and compare every key.
	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dataDir := filepath.Join(t.TempDir(), "restored.etcd")
	if out, err := exec.Command(testharness.Bin(t, "etcdutl"), "snapshot", "restore", dbPath, "--data-dir", dataDir,
		"--name", "restored", "--initial-cluster", "restored="+peer, "--initial-advertise-peer-urls", peer).CombinedOutput(); err != nil {
		t.Fatalf("etcdutl snapshot restore: %v\n%s", err, out)
	}
	restored := testharness.StartEtcdProc(t, testharness.ProcConfig{
		Name: "restored", DataDir: dataDir, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), PeerURL: peer,
	})
	if err := restored.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	rcli, err := clientv3.New(clientv3.Config{Endpoints: []string{restored.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer rcli.Close()
	got := dump(t, rcli)
	if len(got) != len(want) {
		t.Fatalf("restored etcd has %d keys, source %d", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			t.Fatalf("key %s: restored %+v, source %+v", k, got[k], w)
		}
	}
}

// A kill -9 cannot abort its own multipart upload; the snapshot must not be listed, and
// the next save cleans up what was left.
func TestE2EKilledSaveIsNeverListed(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	e := testharness.StartEtcd(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), e.Client(t), loadgen.Options{TargetBytes: 48 << 20, ValueSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	env := append(srv.Env(), "ETCDGUARD_ENDPOINTS="+e.Endpoints[0], "ETCDGUARD_STORE="+srv.URL(""), "ETCDGUARD_CLUSTER=c1")

	cmd := exec.Command(etcdguardBin, "snapshot", "save", "--compression", "none", "--s3-part-size", "5MiB", "--s3-concurrency", "1")
	cmd.Env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(srv.OpenUploads(t)) == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("no multipart upload started within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("save finished before it could be killed: %v", err)
	}

	list := decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json"))
	if len(list) != 0 {
		t.Fatalf("a killed save is listed: %+v", list)
	}
	if n := len(srv.OpenUploads(t)); n != 1 {
		t.Fatalf("%d open uploads after kill -9, want the killed one", n)
	}
	// The next save aborts uploads older than --stale-upload-age, then saves.
	time.Sleep(10 * time.Millisecond)
	decodeJSON[snapshot.Manifest](t, run(t, env, "snapshot", "save", "-o", "json", "--stale-upload-age", "5ms"))
	if n := len(srv.OpenUploads(t)); n != 0 {
		t.Fatalf("%d open uploads after the next save", n)
	}
	if list := decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json")); len(list) != 1 {
		t.Fatalf("list after the next save: %d snapshots", len(list))
	}
}
