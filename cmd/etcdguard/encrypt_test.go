package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// Client-side encryption end to end: what is stored is age ciphertext to the recipients
// (neither zstd nor an etcd DB, and no value of etcd in it); verify and restore need an
// identity of a recipient, and with a wrong or missing one fail before writing anything,
// naming the recipients.
func TestE2EEncryptedSnapshots(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	e := testharness.StartEtcd(t)
	const marker = "value-that-must-never-be-stored-in-the-clear"
	if _, err := e.Client(t).Put(context.Background(), "/registry/secrets/default/s1", marker); err != nil {
		t.Fatal(err)
	}
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), e.Client(t), loadgen.Options{TargetBytes: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key := func(name string) (*age.X25519Identity, string) {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(id.String()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return id, path
	}
	ops, opsFile := key("ops.key")
	_, eveFile := key("eve.key")
	env := append(srv.Env(), "ETCDGUARD_ENDPOINTS="+e.Endpoints[0], "ETCDGUARD_STORE="+srv.URL(""), "ETCDGUARD_CLUSTER=c1")

	r := run(t, env, "snapshot", "save", "-o", "json", "--encrypt-recipient", ops.Recipient().String())
	if r.code != 0 {
		t.Fatalf("encrypted save: %s", r.stderr)
	}
	m := decodeJSON[snapshot.Manifest](t, r)
	if m.Encryption != "age" || len(m.Recipients) != 1 || m.Recipients[0] != ops.Recipient().String() || !strings.HasSuffix(m.Object, ".db.zst.age") {
		t.Fatalf("manifest: encryption %q, recipients %v, object %s", m.Encryption, m.Recipients, m.Object)
	}
	raw := getObject(t, srv, m.Object)
	if !bytes.HasPrefix(raw, []byte("age-encryption.org/v1\n")) || bytes.HasPrefix(raw, []byte{0x28, 0xb5, 0x2f, 0xfd}) || bytes.Contains(raw, []byte(marker)) {
		t.Fatalf("the stored object starts %q: want age's header, no zstd frame, no value of etcd", raw[:32])
	}
	manifestJSON := getObject(t, srv, "c1/snapshots/"+m.ID+".json")
	if bytes.Contains(manifestJSON, []byte("AGE-SECRET-KEY")) || !bytes.Contains(manifestJSON, []byte(ops.Recipient().String())) {
		t.Fatalf("manifest %s: want the recipient's public key, no secret", manifestJSON)
	}

	for _, tc := range []struct {
		name     string
		identity []string
		want     []string
	}{
		{name: "no identity", want: []string{"encrypted with age to " + ops.Recipient().String(), "pass --identity-file"}},
		{name: "wrong identity", identity: []string{"--identity-file", eveFile}, want: []string{"encrypted with age to " + ops.Recipient().String(), eveFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, env, append([]string{"snapshot", "verify", "latest"}, tc.identity...)...)
			if line := r.errorLine(t); r.code == 0 || !containsAll(line, tc.want) {
				t.Errorf("verify: exit %d, %q; want %q", r.code, line, tc.want)
			}
			target := filepath.Join(t.TempDir(), "restored")
			r = run(t, env, append([]string{"restore", "--snapshot", "latest", "--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:2380", "--data-dir", target}, tc.identity...)...)
			if line := r.errorLine(t); r.code == 0 || !containsAll(line, tc.want) {
				t.Errorf("restore: exit %d, %q; want %q", r.code, line, tc.want)
			}
			if _, err := os.Stat(target); !os.IsNotExist(err) {
				t.Errorf("a refused restore left %s: %v", target, err)
			}
		})
	}

	if r := run(t, env, "snapshot", "verify", "latest", "--identity-file", opsFile); r.code != 0 || !strings.HasPrefix(r.stdout, "OK "+m.ID) {
		t.Fatalf("verify with the identity: exit %d, %s%s", r.code, r.stdout, r.stderr)
	}
	target := filepath.Join(t.TempDir(), "restored")
	if r := run(t, env, "restore", "--snapshot", "latest", "--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:2380", "--data-dir", target, "--identity-file", opsFile); r.code != 0 {
		t.Fatalf("restore with the identity: %s", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(target, "member", "snap", "db")); err != nil {
		t.Fatalf("restored data dir: %v", err)
	}
	// Once a cluster is encrypted, a command without the recipients is refused: it would
	// store a snapshot in the clear next to the encrypted ones.
	r = run(t, env, "snapshot", "save")
	if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, "is encrypted to "+ops.Recipient().String()) || !strings.Contains(line, "recorded by snapshot of") {
		t.Errorf("plain save of an encrypted cluster: exit %d, %q", r.code, line)
	}
	if list := decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json")); len(list) != 1 {
		t.Errorf("%d snapshots after the refused save, want the encrypted one alone", len(list))
	}
	// A daemon that would need the private key on every master is refused.
	if r := run(t, env, "daemon", "--verify", "--encrypt-recipient", ops.Recipient().String(), "--listen", ""); r.code == 0 || !strings.Contains(r.stderr, "needs --identity-file") {
		t.Errorf("daemon --verify with encryption and no identity: exit %d, %s", r.code, r.stderr)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// getObject reads an object as stored, past every decorator of etcdguard.
func getObject(t *testing.T, srv *testharness.S3Server, key string) []byte {
	t.Helper()
	out, err := srv.Client(t).GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Point-in-time restore over encrypted delta segments: the daemon encrypts what it
// captures; every stored segment is age ciphertext with no value of etcd in it; restore
// --revision in the middle of the deltas needs the identity (a wrong one is refused before
// anything is written, naming the recipients) and with it equals etcd at that revision.
func TestE2EEncryptedPointInTime(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	dir := t.TempDir()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	ops, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	eve, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	opsFile, eveFile := filepath.Join(keys, "ops.key"), filepath.Join(keys, "eve.key")
	for path, id := range map[string]*age.X25519Identity{opsFile: ops, eveFile: eve} {
		if err := os.WriteFile(path, []byte(id.String()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_STORE=file://" + dir, "ETCDGUARD_CLUSTER=prod"}
	d := startDaemon(t, env, "", "--schedule", "@every 1h", "--election-ttl", "2s", "--delta", "--delta-flush", "200ms",
		"--encrypt-recipient", ops.Recipient().String()).cmd
	waitFor(t, 30*time.Second, "the daemon's first snapshot", func() bool {
		return len(listSnapshots(t, dir, "prod")) > 0
	})
	const marker = "delta-value-that-must-never-be-stored-in-the-clear"
	for i := range 60 {
		must(cli.Put(ctx, fmt.Sprintf("/registry/secrets/default/s%d", i%7), fmt.Sprintf("%s-%d", marker, i)))
		if i%5 == 4 {
			must(cli.Delete(ctx, fmt.Sprintf("/registry/secrets/default/s%d", i%3)))
		}
	}
	last := must(cli.Get(ctx, "x")).Header.Revision
	segs := deltatest.Stored(t, st, "prod", last)
	d.Process.Signal(syscall.SIGTERM)
	d.Wait()
	// What is stored, file by file: listings name segments by revision only.
	stored := 0
	err = filepath.WalkDir(filepath.Join(dir, "prod", "deltas"), func(path string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(raw, []byte(marker)) {
			t.Errorf("%s holds a value of etcd in the clear", path)
		}
		if strings.HasSuffix(path, ".json") {
			if base := filepath.Base(path); base[0] < '0' || base[0] > '9' {
				return nil // the history's own records (observed.json), not a segment's
			}
			var m delta.Manifest
			if err := json.Unmarshal(raw, &m); err != nil || !strings.HasSuffix(m.Object, ".seg.zst.age") || !slices.Equal(m.Recipients, []string{ops.Recipient().String()}) {
				t.Errorf("segment manifest %s: object %q, recipients %v (%v): want an .age object to %s", path, m.Object, m.Recipients, err, ops.Recipient())
			}
			return nil
		}
		stored++
		if !strings.HasSuffix(path, ".seg.zst.age") || !bytes.HasPrefix(raw, []byte("age-encryption.org/v1\n")) {
			t.Errorf("segment %s starts %q: want age ciphertext", path, raw[:min(len(raw), 24)])
		}
		return nil
	})
	if err != nil || stored < len(segs) {
		t.Fatalf("%d segments stored, %d listed: %v", stored, len(segs), err)
	}
	var mid int64
	for _, s := range segs {
		if s.ToRev-s.FromRev >= 2 {
			mid = (s.FromRev + s.ToRev) / 2
		}
	}
	if mid == 0 {
		t.Fatalf("no segment of three revisions or more among %d", len(segs))
	}

	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	restore := func(identity string) (result, string) {
		dataDir := filepath.Join(t.TempDir(), "r.etcd")
		return run(t, env, "restore", "--revision", fmt.Sprint(mid), "--name", "r", "--initial-cluster", "r="+peer, "--data-dir", dataDir, "--identity-file", identity), dataDir
	}
	r, dataDir := restore(eveFile)
	if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, ops.Recipient().String()) {
		t.Fatalf("restore --revision with a wrong identity: exit %d, %q; want a refusal naming %s", r.code, line, ops.Recipient())
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left %s: %v", dataDir, err)
	}
	r, dataDir = restore(opsFile)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("the restored state is revision %d", mid)) {
		t.Fatalf("restore --revision %d with the identity: exit %d\n%s%s", mid, r.code, r.stdout, r.stderr)
	}
	p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
	if err := p.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	sameKeys(t, must(newClient(t, []string{p.Endpoint()}).Get(ctx, "", clientv3.WithFromKey())).Kvs,
		must(cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(mid))).Kvs)
}
