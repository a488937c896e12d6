package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
)

var lockFlags = []string{"--s3-object-lock-mode", "governance", "--s3-object-lock-retain", "1h"}

// A snapshot under S3 Object Lock survives the pruner and a direct delete of its data; an
// unlocked one the policy drops is deleted; the prune succeeds and says what it kept.
func TestObjectLockSurvivesPrune(t *testing.T) {
	srv := testharness.StartMinIOWith(t, testharness.MinIOOptions{ObjectLock: true})
	e := testharness.StartEtcd(t)
	env := append(srv.Env(), "ETCDCTL_ENDPOINTS="+e.Endpoints[0], "ETCDGUARD_STORE="+srv.URL("etcd"), "ETCDGUARD_CLUSTER=prod")
	save := func(args ...string) snapshot.Manifest {
		t.Helper()
		return decodeJSON[snapshot.Manifest](t, run(t, env, append([]string{"snapshot", "save", "-o", "json"}, args...)...))
	}
	unlocked := save()
	time.Sleep(1100 * time.Millisecond) // IDs and retention buckets are per second
	locked := save(lockFlags...)
	time.Sleep(1100 * time.Millisecond)
	newest := save(lockFlags...)

	r := run(t, env, "snapshot", "prune", "--keep-last", "1", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0")
	if r.code != 0 {
		t.Fatalf("prune exited %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "deleted 1 of 3") || !strings.Contains(r.stdout, "kept: locked") || !strings.Contains(r.stdout, "locked until") {
		t.Errorf("prune output:\n%s", r.stdout)
	}
	list := decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json"))
	if len(list) != 2 || list[0].ID != newest.ID || list[1].ID != locked.ID {
		t.Fatalf("after prune: %+v, want %s and %s (%s deleted)", list, newest.ID, locked.ID, unlocked.ID)
	}
	ds := decodeJSON[[]snapshot.Decision](t, run(t, env, "snapshot", "prune", "--keep-last", "1", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0", "-o", "json"))
	for _, d := range ds {
		if d.ID == locked.ID && (!d.Keep || d.LockedUntil == "") {
			t.Errorf("locked snapshot: %+v", d)
		}
	}

	// A compromised node with delete rights tries the data itself: the version stays.
	cli, ctx := srv.Client(t), context.Background()
	key := aws.String("etcd/" + locked.Object)
	head, err := cli.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &srv.Bucket, Key: key, VersionId: head.VersionId}); err == nil {
		t.Fatal("deleting the locked snapshot's version succeeded")
	}
	if _, err := cli.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &srv.Bucket, Key: key}); err != nil {
		t.Fatal(err) // only a delete marker
	}
	obj, err := cli.GetObject(ctx, &s3.GetObjectInput{Bucket: &srv.Bucket, Key: key, VersionId: head.VersionId})
	if err != nil {
		t.Fatalf("the locked version is gone: %v", err)
	}
	n, _ := io.Copy(io.Discard, obj.Body)
	obj.Body.Close()
	if n != locked.StoredSize {
		t.Errorf("the locked version has %d bytes, the manifest says %d", n, locked.StoredSize)
	}
}

func failures(t *testing.T, addr string) float64 {
	total := 0.0
	for _, l := range strings.Split(scrape(t, "http://"+addr+"/metrics"), "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[0], "etcdguard_snapshot_failures_total") {
			v, _ := strconv.ParseFloat(f[1], 64)
			total += v
		}
	}
	return total
}

// The daemon locks what it writes; its own retention finds them locked, keeps them, and
// the runs do not count as failures.
func TestObjectLockDaemon(t *testing.T) {
	srv := testharness.StartMinIOWith(t, testharness.MinIOOptions{ObjectLock: true})
	e := testharness.StartEtcd(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	env := append(srv.Env(), "ETCDCTL_ENDPOINTS="+e.Endpoints[0])
	d := startDaemon(t, env, addr, append([]string{"--cluster", "prod", "--store", srv.URL("etcd"), "--schedule", "@every 1s", "--verify",
		"--keep-last", "1", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0", "--check-interval", "1s"}, lockFlags...)...)
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(d.log)
		if strings.Count(string(b), "snapshot kept: locked until") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon's retention never reported a locked snapshot:\n%s", b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := failures(t, addr); n != 0 {
		t.Errorf("etcdguard_snapshot_failures_total = %v, want 0", n)
	}
	if v := metric(addr, "etcdguard_retention_deleted_total"); v > 0 {
		t.Errorf("retention deleted %v locked snapshots", v)
	}
	list := decodeJSON[[]snapshot.Manifest](t, run(t, append(env, "ETCDGUARD_STORE="+srv.URL("etcd")), "snapshot", "list", "--cluster", "prod", "-o", "json"))
	if len(list) < 3 {
		t.Errorf("%d snapshots listed, want every locked one", len(list))
	}
}

// With --prune=false the daemon deletes nothing: retention runs elsewhere, with another role.
func TestDaemonWithoutPrune(t *testing.T) {
	srv := testharness.StartMinIO(t)
	e := testharness.StartEtcd(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	env := append(srv.Env(), "ETCDCTL_ENDPOINTS="+e.Endpoints[0])
	d := startDaemon(t, env, addr, "--cluster", "prod", "--store", srv.URL("etcd"), "--schedule", "@every 1s", "--prune=false",
		"--keep-last", "1", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0")
	listEnv := append(env, "ETCDGUARD_STORE="+srv.URL("etcd"), "ETCDGUARD_CLUSTER=prod")
	deadline := time.Now().Add(15 * time.Second)
	for {
		list := decodeJSON[[]snapshot.Manifest](t, run(t, listEnv, "snapshot", "list", "-o", "json"))
		if len(list) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots after 15s of @every 1s with --keep-last 1 --prune=false", len(list))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if b, _ := os.ReadFile(d.log); !strings.Contains(string(b), "retention is off") {
		t.Errorf("the daemon did not say retention is off:\n%s", b)
	}
	if n := failures(t, addr); n != 0 {
		t.Errorf("etcdguard_snapshot_failures_total = %v", n)
	}
}
