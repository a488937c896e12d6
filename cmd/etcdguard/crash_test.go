package main

// Crash safety by repetition (issue 15, item 3): every command that writes is killed with
// SIGKILL at many random points of its run, and after each kill (and after a clean re-run)
// the test checks what the design promises: nothing partial is ever visible, and the next
// run finishes the job. The kill delays are uniform over the measured duration of an
// unkilled run, drawn from a seed that is logged (ETCDGUARD_CRASH_SEED replays it);
// ETCDGUARD_CRASH_POINTS sets how many kills per command (default 20).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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

var crashSeedOnce = sync.OnceValue(func() int64 {
	if s := os.Getenv("ETCDGUARD_CRASH_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			panic("ETCDGUARD_CRASH_SEED: " + err.Error())
		}
		return n
	}
	return time.Now().UnixNano()
})

// crashRand is the subtest's random source: the run's seed mixed with the subtest's name,
// so replaying one seed replays every subtest's delays.
func crashRand(t *testing.T) (*rand.Rand, int64) {
	seed := crashSeedOnce()
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	t.Logf("seed %d (replay with ETCDGUARD_CRASH_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(uint64(seed), h.Sum64())), seed
}

// crashPoints is how many kills each command gets.
func crashPoints(t *testing.T) int {
	if s := os.Getenv("ETCDGUARD_CRASH_POINTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("ETCDGUARD_CRASH_POINTS=%q: want a positive number", s)
		}
		return n
	}
	return 20
}

// killer picks kill delays uniformly over the duration of an unkilled run, which it keeps
// measuring (the clean re-runs after each kill), and counts the kills.
type killer struct {
	rng      *rand.Rand
	runs     []time.Duration // of the unkilled runs
	dur      time.Duration   // their median: the machine is shared, and one slow run must not stretch the range
	kills    int
	finished int // runs that ended before the kill
}

func (k *killer) measured(d time.Duration) {
	k.runs = append(k.runs, d)
	sorted := slices.Sorted(slices.Values(k.runs))
	k.dur = sorted[len(sorted)/2]
}

func (k *killer) delay() time.Duration { return time.Duration(k.rng.Int64N(int64(k.dur) + 1)) }

// runKilled runs etcdguard and sends it SIGKILL after delay. killed is false when it
// ended by itself first; r is then its result.
func (k *killer) runKilled(t *testing.T, env []string, delay time.Duration, args ...string) (killed bool, r result) {
	t.Helper()
	cmd := exec.Command(etcdguardBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "AWS_EC2_METADATA_DISABLED=true"}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(delay):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err = <-done
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		k.kills++
		return true, result{stdout.String(), stderr.String(), -1}
	}
	k.finished++
	k.measured(time.Since(start)) // a whole run, too
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return false, result{stdout.String(), stderr.String(), ee.ExitCode()}
	}
	return false, result{stdout.String(), stderr.String(), 0}
}

// more reports whether to go on: until points kills, within a bounded number of runs.
func (k *killer) more(t *testing.T, points int) bool {
	if k.kills >= points {
		return false
	}
	if k.kills+k.finished >= 3*points+10 {
		t.Errorf("only %d of %d runs were killed before they finished (mean run %s)", k.kills, k.kills+k.finished, k.dur)
		return false
	}
	return true
}

// timedRun is run, timed.
func timedRun(t *testing.T, env []string, args ...string) (result, time.Duration) {
	t.Helper()
	start := time.Now()
	r := run(t, env, args...)
	return r, time.Since(start)
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("kills real processes at many points: not with -short")
	}
	// One etcd with enough data that a save or restore runs for a few hundred ms (and an
	// uncompressed save needs three 5 MiB parts on S3); only read by the subtests that share it.
	src := testharness.StartEtcd(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), src.Client(t), loadgen.Options{TargetBytes: 12 << 20, ValueSize: 8 << 10, Seed: 15}); err != nil {
		t.Fatal(err)
	}
	// The daemon's run is the longest (it waits out the killed leader's 2s lease each
	// time) and mostly sleeps: first, beside the others.
	t.Run("daemon", func(t *testing.T) {
		t.Parallel()
		crashDaemon(t)
	})
	t.Run("save-file", func(t *testing.T) {
		t.Parallel()
		env := []string{"ETCDGUARD_ENDPOINTS=" + src.Endpoints[0], "ETCDGUARD_CLUSTER=c1", "ETCDGUARD_STORE=file://" + t.TempDir()}
		crashSave(t, "snapshot save (file://)", env, nil)
	})
	t.Run("save-s3", func(t *testing.T) {
		t.Parallel()
		srv := testharness.StartVersityGW(t)
		env := append(srv.Env(), "ETCDGUARD_ENDPOINTS="+src.Endpoints[0], "ETCDGUARD_CLUSTER=c1", "ETCDGUARD_STORE="+srv.URL("crash"))
		crashSave(t, "snapshot save (S3, versitygw)", env, srv, "--compression", "none", "--s3-part-size", "5MiB", "--s3-concurrency", "1")
	})
	t.Run("restore", func(t *testing.T) {
		t.Parallel()
		crashRestore(t, src)
	})
	t.Run("del-undo", func(t *testing.T) {
		t.Parallel()
		crashDelUndo(t)
	})
}

// listed returns the snapshots `snapshot list` shows, and verifies with `snapshot verify`
// each one not verified before: a listed snapshot is complete and restorable.
func listedVerified(t *testing.T, env []string, verified map[string]bool) []snapshot.Manifest {
	t.Helper()
	list := decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json"))
	for _, m := range list {
		if verified[m.ID] {
			continue
		}
		if m.Verification == snapshot.Missing || m.Verification == snapshot.Failed {
			t.Fatalf("a partial snapshot is listed: %s (%s: %v)", m.ID, m.Verification, m.Problems)
		}
		r := run(t, env, "snapshot", "verify", m.ID, "-o", "json")
		rep := decodeJSON[snapshot.VerifyReport](t, r)
		if !rep.OK || rep.SHA256 != m.SHA256 {
			t.Fatalf("listed snapshot %s does not verify: %+v", m.ID, rep)
		}
		verified[m.ID] = true
	}
	return list
}

// storeLeftovers counts, in a file:// store's snapshots, the temp files of killed Puts and
// the objects without a manifest (killed between the object and its manifest).
func storeLeftovers(t *testing.T, dir string) (temps, orphans int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		switch {
		case strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-"):
			temps++
		case strings.Contains(name, ".db"):
			id := name[:strings.Index(name, ".db")]
			if _, err := os.Stat(filepath.Join(filepath.Dir(p), id+".json")); errors.Is(err, os.ErrNotExist) {
				orphans++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return temps, orphans
}

// s3Orphans counts the snapshot objects in the bucket that no manifest names.
func s3Orphans(t *testing.T, srv *testharness.S3Server) int {
	t.Helper()
	keys := map[string]bool{}
	p := s3.NewListObjectsV2Paginator(srv.Client(t), &s3.ListObjectsV2Input{Bucket: aws.String(srv.Bucket)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			keys[aws.ToString(o.Key)] = true
		}
	}
	n := 0
	for k := range keys {
		if i := strings.Index(k, ".db"); i > 0 && !keys[k[:i]+".json"] {
			n++
		}
	}
	return n
}

// crashSave kills `snapshot save`: no partial snapshot is ever listed, every listed one
// verifies, and the next save succeeds. What a killed save leaves (an open multipart
// upload, a file store's temp file) is removed by the next save once it is older than
// --stale-upload-age (default 1h, as the design says: a younger one may be another save's
// live upload); the clean re-runs alternate the default, which must leave them, and 1ms,
// which must remove them all.
func crashSave(t *testing.T, area string, env []string, srv *testharness.S3Server, extra ...string) {
	rng, seed := crashRand(t)
	points := crashPoints(t)
	start := time.Now()
	save := append([]string{"snapshot", "save", "-o", "json"}, extra...)
	var dir string
	if srv == nil {
		for _, e := range env {
			if s, ok := strings.CutPrefix(e, "ETCDGUARD_STORE=file://"); ok {
				dir = s
			}
		}
	}
	what := "a temp file" // of a killed Put, beside its object
	if srv != nil {
		what = "an open multipart upload"
	}
	leftovers := func() int {
		if srv != nil {
			return len(srv.OpenUploads(t))
		}
		n, _ := storeLeftovers(t, dir)
		return n
	}
	orphaned := func() int {
		if srv != nil {
			return s3Orphans(t, srv)
		}
		_, n := storeLeftovers(t, dir)
		return n
	}

	k := &killer{rng: rng}
	verified := map[string]bool{}
	r, d := timedRun(t, env, save...)
	first := decodeJSON[snapshot.Manifest](t, r)
	k.measured(d)
	complete := 1 // saves that ended with exit 0
	listedVerified(t, env, verified)
	var left, leftByKills, cleaned, kept int
	var orphans, orphanedByKills int // objects without a manifest, now and left by kills in all
	for i := 0; k.more(t, points); i++ {
		killed, r := k.runKilled(t, env, k.delay(), save...)
		if !killed {
			decodeJSON[snapshot.Manifest](t, r)
			complete++
		}
		list := listedVerified(t, env, verified)
		// A kill after the manifest was written leaves a complete snapshot; nothing else is listed.
		if len(list) < complete || len(list) > complete+k.kills {
			t.Fatalf("after %d completed saves and %d kills, %d snapshots are listed", complete, k.kills, len(list))
		}
		complete = len(list)
		before := leftovers()
		if before < left || before > left+1 {
			t.Fatalf("a kill changed the interrupted uploads from %d to %d", left, before)
		}
		leftByKills += before - left
		orphansBefore := orphaned() // a kill between the object and its manifest
		if orphansBefore < orphans || orphansBefore > orphans+1 {
			t.Fatalf("a kill changed the objects without a manifest from %d to %d", orphans, orphansBefore)
		}
		orphanedByKills += orphansBefore - orphans
		args := save
		if i%2 == 1 {
			time.Sleep(5 * time.Millisecond) // older than 1ms for certain
			args = append(slices.Clip(save), "--stale-upload-age", "1ms")
		}
		r, d := timedRun(t, env, args...)
		m := decodeJSON[snapshot.Manifest](t, r)
		k.measured(d)
		complete++
		if list := listedVerified(t, env, verified); list[0].ID != m.ID {
			t.Fatalf("the next save %s is not the newest listed (%s)", m.ID, list[0].ID)
		}
		left, orphans = leftovers(), orphaned()
		switch {
		case i%2 == 1 && left != 0:
			t.Fatalf("%d interrupted uploads remain after a save with --stale-upload-age 1ms", left)
		case i%2 == 1 && orphans != 0:
			t.Fatalf("%d objects without a manifest remain after a save with --stale-upload-age 1ms", orphans)
		case i%2 == 0 && orphans != orphansBefore:
			t.Fatalf("a save with the default --stale-upload-age (1h) changed the objects without a manifest from %d to %d", orphansBefore, orphans)
		case i%2 == 1:
			cleaned++
		case left != before:
			t.Fatalf("a save with the default --stale-upload-age (1h) changed the interrupted uploads from %d to %d", before, left)
		default:
			kept++
		}
	}
	t.Logf("%s: %d kills, %d runs finished first, median unkilled run %s, %d snapshots listed and verified (first %s); "+
		"%d kills left %s: %d saves with the default --stale-upload-age 1h left them, %d with 1ms removed them all; %d kills left an object without manifest; took %s",
		area, k.kills, k.finished, k.dur.Round(time.Millisecond), len(verified), first.ID, leftByKills, what, kept, cleaned, orphanedByKills, time.Since(start).Round(time.Millisecond))
	testharness.RecordFault(t, testharness.FaultRow{
		Area: area, Fault: fmt.Sprintf("kill -9 at a random point (seed %d)", seed), Tries: k.kills,
		Result: fmt.Sprintf("no partial snapshot ever listed: all %d listed verified; the next save succeeded every time; "+
			"%d kills left %s: the next save kept it with the default --stale-upload-age 1h (a younger one may be live) and removed every one with 1ms; "+
			"%d kills between the object and its manifest left an object no manifest names: never listed, kept and removed the same way", len(verified), leftByKills, what, orphanedByKills),
	})
}

// treeOf lists a data dir's files with their sizes, the WAL's and db's included: a
// restore of one snapshot always writes the same tree.
func treeOf(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		size := ""
		if !d.IsDir() {
			size = fmt.Sprint(info.Size())
		}
		out = append(out, strings.TrimPrefix(p, dir)+" "+size)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "\n")
}

// crashRestore kills `restore`: the target data dir either does not exist or is complete
// (the same tree as an unkilled restore's, and etcd starts on it with every key), since a
// restore writes a hidden sibling and renames it into place. A re-run succeeds when the
// dir does not exist and refuses (exit 1, "exists and is not empty") when it does.
func crashRestore(t *testing.T, src *testharness.Etcd) {
	rng, seed := crashRand(t)
	points := crashPoints(t)
	start := time.Now()
	env := []string{"ETCDGUARD_ENDPOINTS=" + src.Endpoints[0], "ETCDGUARD_CLUSTER=c1", "ETCDGUARD_STORE=file://" + t.TempDir()}
	m := decodeJSON[snapshot.Manifest](t, run(t, env, "snapshot", "save", "-o", "json"))
	want := must(src.Client(t).Get(context.Background(), "", clientv3.WithFromKey(), clientv3.WithRev(m.Revision))).Kvs
	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	base := t.TempDir()
	restoreTo := func(dataDir string) []string {
		// One token: every restore writes the same bytes (the token sets the cluster ID).
		return []string{"restore", "--snapshot", m.ID, "--name", "m", "--initial-cluster", "m=" + peer, "--initial-cluster-token", "crash", "--data-dir", dataDir}
	}
	// Starts etcd on a restored dir and compares every key with the source's.
	startable := func(dataDir string) {
		t.Helper()
		p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "m", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
		if err := p.WaitHealthy(30 * time.Second); err != nil {
			t.Fatalf("etcd does not start on %s: %v", dataDir, err)
		}
		got := must(newClient(t, []string{p.Endpoint()}).Get(context.Background(), "", clientv3.WithFromKey())).Kvs
		sameKeys(t, got, want)
		p.Stop()
	}

	k := &killer{rng: rng}
	ref := filepath.Join(base, "ref", "m.etcd")
	r, d := timedRun(t, env, restoreTo(ref)...)
	if r.code != 0 {
		t.Fatalf("restore: exit %d\n%s", r.code, r.stderr)
	}
	k.measured(d)
	refTree := treeOf(t, ref)
	startable(ref)
	var absent, whole, hidden int
	for i := 0; k.more(t, points); i++ {
		parent := filepath.Join(base, fmt.Sprintf("k%02d", i))
		target := filepath.Join(parent, "m.etcd")
		killed, r := k.runKilled(t, env, k.delay(), restoreTo(target)...)
		if !killed && r.code != 0 {
			t.Fatalf("restore: exit %d\n%s", r.code, r.stderr)
		}
		_, err := os.Stat(target)
		exists := err == nil
		if exists {
			if tr := treeOf(t, target); tr != refTree {
				t.Fatalf("a killed restore left a half data dir %s:\n%s\nwant\n%s", target, tr, refTree)
			}
		}
		if killed && exists {
			// Killed after the rename: the dir must be whole and etcd must start on it;
			// a re-run must refuse to touch it.
			whole++
			startable(target)
			r := run(t, env, restoreTo(target)...)
			if r.code != 1 || !strings.Contains(r.stderr, "exists and is not empty") {
				t.Fatalf("a re-run of a restore into the existing %s: exit %d\n%s", target, r.code, r.stderr)
			}
		} else if killed {
			absent++
			r, d := timedRun(t, env, restoreTo(target)...)
			if r.code != 0 {
				t.Fatalf("the re-run of a killed restore: exit %d\n%s", r.code, r.stderr)
			}
			k.measured(d)
			if tr := treeOf(t, target); tr != refTree {
				t.Fatalf("the re-run wrote %s:\n%s\nwant\n%s", target, tr, refTree)
			}
		}
		// A killed restore cannot remove its hidden temp dir and downloaded file; they
		// sit beside the target, never at it, and the re-run removes them (a restore that
		// refuses an existing data dir changes nothing, so they stay with a whole one).
		entries, err := os.ReadDir(parent)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() != "m.etcd" {
				if !strings.HasPrefix(e.Name(), ".m.etcd.etcdguard-") {
					t.Fatalf("a restore left %s beside the target", e.Name())
				}
				if killed && !exists {
					t.Fatalf("the re-run of a killed restore left what the killed one wrote beside the target: %s", e.Name())
				}
				hidden++
			}
		}
		if err := os.RemoveAll(parent); err != nil { // 64 MiB of WAL each
			t.Fatal(err)
		}
	}
	t.Logf("restore: %d kills (%d before the rename: no data dir; %d after: a whole one), %d runs finished first, median unkilled run %s; "+
		"%d hidden temp files/dirs left beside whole targets (a refusing re-run changes nothing); took %s", k.kills, absent, whole, k.finished, k.dur.Round(time.Millisecond), hidden, time.Since(start).Round(time.Millisecond))
	testharness.RecordFault(t, testharness.FaultRow{
		Area: "restore (file://)", Fault: fmt.Sprintf("kill -9 at a random point (seed %d)", seed), Tries: k.kills,
		Result: fmt.Sprintf("never a half data dir: %d kills left none (the re-run succeeded, same files as an unkilled restore), %d a whole one "+
			"(etcd started on it with every key; the re-run refused: exists and is not empty); the re-run removed what the killed one left beside the target", absent, whole),
	})
}

type planStateRow struct {
	ID    string `json:"plan_id"`
	State string `json:"state"`
}

func planStateOf(t *testing.T, env []string, id string) string {
	t.Helper()
	for _, p := range decodeJSON[[]planStateRow](t, run(t, env, "guard", "plans", "-o", "json")) {
		if p.ID == id {
			return p.State
		}
	}
	t.Fatalf("plan %s is not listed", id)
	return ""
}

// crashDelUndo kills `del --confirm` and `guard undo`. A killed confirm has either deleted
// nothing (every key as it was) or the whole range, never part of it; a re-run of the
// confirm finishes it (or refuses, naming it executed), and then every key is gone. A
// killed undo has put back only keys with their values; a re-run puts back the rest, and
// the range ends exactly as it was before the delete: the saved copy held every key.
func crashDelUndo(t *testing.T) {
	rng, seed := crashRand(t)
	points := crashPoints(t)
	start := time.Now()
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_CLUSTER=c1", "ETCDGUARD_STORE=file://" + t.TempDir()}
	// Enough keys that saving and deleting them is a good part of a confirm's run, not
	// only its start-up.
	const keys = 3000

	// fill writes the range's keys, values of 0.5 to 1.5 KiB.
	fill := func(prefix string) map[string]string {
		t.Helper()
		want := map[string]string{}
		var ops []clientv3.Op
		for j := range keys {
			k := fmt.Sprintf("%scm-%05d", prefix, j)
			v := strings.Repeat(strconv.FormatUint(rng.Uint64(), 36), 200)[:512+rng.IntN(1024)]
			want[k] = v
			ops = append(ops, clientv3.OpPut(k, v))
			if len(ops) == 100 {
				must(cli.Txn(ctx).Then(ops...).Commit())
				ops = ops[:0]
			}
		}
		return want
	}
	inRange := func(prefix string) map[string]string {
		t.Helper()
		got := map[string]string{}
		for _, kv := range must(cli.Get(ctx, prefix, clientv3.WithPrefix())).Kvs {
			got[string(kv.Key)] = string(kv.Value)
		}
		return got
	}
	// checks that every key in the range has its value from before the delete.
	noWrongValue := func(prefix string, want map[string]string) int {
		t.Helper()
		got := inRange(prefix)
		for k, v := range got {
			if want[k] != v {
				t.Fatalf("%s has a value it did not have before the delete", k)
			}
		}
		return len(got)
	}
	plan := func(prefix string) string {
		t.Helper()
		p := decodeJSON[struct {
			ID       string `json:"plan_id"`
			KeyCount int64  `json:"key_count"`
		}](t, run(t, env, "del", prefix, "--prefix", "--dry-run", "--max-keys", "100000", "-o", "json"))
		if p.KeyCount != keys {
			t.Fatalf("plan %s has %d keys, want %d", p.ID, p.KeyCount, keys)
		}
		return p.ID
	}

	kc, ku := &killer{rng: rng}, &killer{rng: rng}
	// An unkilled round measures both.
	prefix := "/registry/configmaps/crash-clean/"
	want := fill(prefix)
	id := plan(prefix)
	r, d := timedRun(t, env, "del", "--confirm", id, "-o", "json")
	if r.code != 0 || len(inRange(prefix)) != 0 {
		t.Fatalf("confirm: exit %d\n%s", r.code, r.stderr)
	}
	kc.measured(d)
	r, d = timedRun(t, env, "guard", "undo", id)
	if r.code != 0 || noWrongValue(prefix, want) != keys {
		t.Fatalf("undo: exit %d\n%s", r.code, r.stderr)
	}
	ku.measured(d)

	var notDone, done, interrupted, settledByUndo, partialUndo int
	for i := 0; (kc.kills < points || ku.kills < points) && i < 3*points+10; i++ {
		prefix := fmt.Sprintf("/registry/configmaps/crash-%02d/", i)
		want := fill(prefix)
		id := plan(prefix)
		killed, r := kc.runKilled(t, env, kc.delay(), "del", "--confirm", id, "-o", "json")
		if !killed && r.code != 0 {
			t.Fatalf("confirm: exit %d\n%s", r.code, r.stderr)
		}
		n := noWrongValue(prefix, want)
		state := planStateOf(t, env, id)
		switch {
		case !killed && (n != 0 || state != "executed"):
			t.Fatalf("after a confirm, %d of the %d keys are left and the plan is %s", n, keys, state)
		case !killed:
		case n == keys && (state == "planned" || state == "interrupted"):
			notDone++
		case n == 0 && (state == "executed" || state == "interrupted"):
			done++
		default:
			t.Fatalf("after a killed confirm, %d of the %d keys are left and the plan is %s", n, keys, state)
		}
		if killed && state == "interrupted" {
			interrupted++
			if n == 0 && i%2 == 0 {
				settledByUndo++
			}
		}
		if n == keys {
			// Nothing was deleted: an undo must not put back a saved copy of a delete that
			// never happened (nor touch a key).
			r := run(t, env, "guard", "undo", id)
			if r.code != exitRefused || !strings.Contains(r.stderr, "nothing to undo") || noWrongValue(prefix, want) != keys {
				t.Fatalf("undo of a plan whose confirm was killed before deleting: exit %d\n%s", r.code, r.stderr)
			}
		}
		// Every other time the keys are gone, the undo below is what finds out (from etcd)
		// that the killed confirm deleted them; otherwise a re-run of the confirm does.
		if n == keys || i%2 == 1 {
			r, d := timedRun(t, env, "del", "--confirm", id, "-o", "json")
			switch {
			case r.code == 0 && n == keys:
				kc.measured(d)
			case r.code == exitRefused && n == 0 && strings.Contains(r.stderr, "executed"):
			default:
				t.Fatalf("the re-run of the confirm with %d keys left: exit %d\n%s", n, r.code, r.stderr)
			}
			if n := len(inRange(prefix)); n != 0 {
				t.Fatalf("%d keys left after the re-run of the confirm", n)
			}
			if s := planStateOf(t, env, id); s != "executed" {
				t.Fatalf("plan %s is %s after the re-run of the confirm", id, s)
			}
		}

		killed, r = ku.runKilled(t, env, ku.delay(), "guard", "undo", id)
		if !killed && r.code != 0 {
			t.Fatalf("undo: exit %d\n%s", r.code, r.stderr)
		}
		if n := noWrongValue(prefix, want); killed && n > 0 && n < keys {
			partialUndo++
		} else if !killed && n != keys {
			t.Fatalf("an undo put back %d of %d keys", n, keys)
		}
		r, d = timedRun(t, env, "guard", "undo", id)
		switch {
		case r.code == 0:
			if strings.HasPrefix(r.stdout, "put back "+strconv.Itoa(keys)+" keys") {
				ku.measured(d)
			}
		case r.code == exitRefused && strings.Contains(r.stderr, "is undone"):
		default:
			t.Fatalf("the re-run of the undo: exit %d\n%s", r.code, r.stderr)
		}
		if n := noWrongValue(prefix, want); n != keys {
			t.Fatalf("after the re-run of the undo %d keys are back, want all %d", n, keys)
		}
		if s := planStateOf(t, env, id); s != "undone" {
			t.Fatalf("plan %s is %s after the re-run of the undo", id, s)
		}
	}
	if kc.kills < points || ku.kills < points {
		t.Errorf("only %d confirms and %d undos of %d runs each were killed before they finished", kc.kills, ku.kills, kc.kills+kc.finished)
	}
	t.Logf("del --confirm: %d kills (%d deleted nothing, %d everything; %d left the plan interrupted, %d of them with the keys deleted and settled by the undo), %d finished first, median unkilled run %s",
		kc.kills, notDone, done, interrupted, settledByUndo, kc.finished, kc.dur.Round(time.Millisecond))
	t.Logf("guard undo: %d kills (%d had put back some batches), %d finished first, median unkilled run %s; took %s",
		ku.kills, partialUndo, ku.finished, ku.dur.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	testharness.RecordFault(t, testharness.FaultRow{
		Area: "del --confirm (file://)", Fault: fmt.Sprintf("kill -9 at a random point (seed %d)", seed), Tries: kc.kills,
		Result: fmt.Sprintf("never a partial delete: %d kills deleted nothing, %d all %d keys (%d left the plan interrupted); "+
			"an undo refused the plans that deleted nothing; the re-run of the confirm finished or named it executed (or undo found it executed: %d), and undo brought back every key and value", notDone, done, keys, interrupted, settledByUndo),
	})
	testharness.RecordFault(t, testharness.FaultRow{
		Area: "guard undo (file://)", Fault: fmt.Sprintf("kill -9 at a random point (seed %d)", seed), Tries: ku.kills,
		Result: fmt.Sprintf("a killed undo put back only whole batches with their values (%d stopped part-way); the re-run completed it: all %d keys equal to before the delete", partialUndo, keys),
	})
}

// crashDaemon kills the daemon (--delta, a snapshot every second, keep-last 4 so runs
// prune) at random points while a writer changes etcd, and restarts it. The points rotate
// over three phases, so each is hit whatever the machine's speed: any time in the first
// runs, just after a save started, and just after retention deleted a snapshot (while it
// prunes the rest and the delta segments it no longer needs). After each kill
// every listed snapshot verifies; at the end the current history's delta segments chain
// with no gap and no overlap from the oldest snapshot to etcd's last revision, timeline
// shows no gap, and restores at the last revision and at a random one in between equal
// etcd's own reads at those revisions, key for key.
func crashDaemon(t *testing.T) {
	rng, seed := crashRand(t)
	points := crashPoints(t)
	start := time.Now()
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	if _, err := loadgen.LoadK8sKeyspace(ctx, cli, loadgen.Options{TargetBytes: 8 << 20, ValueSize: 8 << 10, Seed: 16}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	const cluster = "crashd"
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_CLUSTER=" + cluster, "ETCDGUARD_STORE=file://" + dir}
	args := []string{"--schedule", "@every 1s", "--election-ttl", "2s", "--delta", "--delta-flush", "200ms",
		"--keep-last", "4", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0"}

	// The writer: puts, overwrites and deletes, some in transactions, about 100 revisions a second.
	wctx, stopWriter := context.WithCancel(ctx)
	var writer sync.WaitGroup
	writer.Go(func() {
		for i := 0; wctx.Err() == nil; i++ {
			var err error
			switch i % 10 {
			case 9:
				_, err = cli.Delete(wctx, fmt.Sprintf("/registry/leases/crash/l%03d", (i*7)%200))
			case 5:
				_, err = cli.Txn(wctx).Then(clientv3.OpPut(fmt.Sprintf("/registry/pods/crash/p%03d", i%100), fmt.Sprint(i)),
					clientv3.OpPut(fmt.Sprintf("/registry/events/crash/e%05d", i), "event")).Commit()
			default:
				_, err = cli.Put(wctx, fmt.Sprintf("/registry/leases/crash/l%03d", i%200), fmt.Sprint(i))
			}
			if err != nil && wctx.Err() == nil {
				t.Errorf("writer: %v", err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	defer func() { stopWriter(); writer.Wait() }()

	waitLog := func(d *daemonProc, msg string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if b, _ := os.ReadFile(d.log); bytes.Contains(b, []byte(msg)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the daemon did not log %q within 30s", msg)
			}
		}
	}
	const window = 2500 * time.Millisecond // at least two scheduled runs and a dozen flushes
	verified := map[string]bool{}
	// chain checks what the store holds while no daemon runs: every listed snapshot
	// verifies, all are of one history (a kill never starts a new one), and the segments
	// after the oldest snapshot chain with no gap and no overlap. It returns the history
	// and the last revision stored in a segment. Where the segment the killed daemon
	// stored last is still kept (retention keeps 4 snapshots), the restarted one's first
	// segment must start right after it: each such restart is counted in joins.
	var joins int
	chain := func(stoppedAt int64) (history string, lastTo int64) {
		t.Helper()
		list := listedVerified(t, env, verified)
		if len(list) == 0 {
			return "", 0
		}
		oldest := list[len(list)-1]
		for _, m := range list {
			if m.History != oldest.History {
				t.Fatalf("the kills started a new history: snapshot %s is in %s, %s in %s", m.ID, m.History, oldest.ID, oldest.History)
			}
		}
		segs, err := delta.Segments(ctx, st, cluster, oldest.History, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		var prev *delta.Manifest
		for _, s := range segs {
			switch {
			case s.ToRev <= oldest.Revision:
				continue
			case prev == nil && s.FromRev > oldest.Revision+1:
				t.Fatalf("the first segment after the oldest snapshot (revision %d) starts at %d: a gap", oldest.Revision, s.FromRev)
			case prev != nil && s.FromRev != prev.ToRev+1:
				t.Fatalf("delta segments %d-%d and %d-%d: a gap or a duplicate", prev.FromRev, prev.ToRev, s.FromRev, s.ToRev)
			}
			if prev != nil && prev.ToRev == stoppedAt {
				joins++
			}
			prev = s
		}
		if prev == nil {
			return oldest.History, 0
		}
		return oldest.History, prev.ToRev
	}
	var kills, inSave, inPrune, prunes int
	var stoppedAt int64 // the last revision the previous daemon stored in a segment
	for kills < points {
		d := startDaemon(t, env, "", args...)
		waitLog(d, "elected: this daemon takes the snapshots") // the killed one's lease expires first
		switch kills % 3 {
		case 0:
			time.Sleep(time.Duration(rng.Int64N(int64(window))))
		case 1:
			waitLog(d, `"msg":"snapshot started"`)
			time.Sleep(time.Duration(rng.Int64N(int64(100 * time.Millisecond))))
		case 2:
			waitLog(d, `"msg":"snapshot pruned"`)
			time.Sleep(time.Duration(rng.Int64N(int64(20 * time.Millisecond))))
			inPrune++
		}
		if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = d.cmd.Wait()
		if ws, ok := d.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("the daemon ended before it was killed: %v", d.cmd.ProcessState)
		}
		kills++
		b, _ := os.ReadFile(d.log)
		if bytes.Count(b, []byte(`"msg":"snapshot started"`)) > bytes.Count(b, []byte(`"msg":"snapshot saved"`)) {
			inSave++
		}
		prunes += bytes.Count(b, []byte(`"msg":"snapshot pruned"`))
		_, stoppedAt = chain(stoppedAt)
	}

	stopWriter()
	writer.Wait()
	last := must(cli.Get(ctx, "x")).Header.Revision
	d := startDaemon(t, env, "", args...)
	deltatest.Stored(t, st, cluster, last)
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = d.cmd.Wait()

	if inSave == 0 || prunes == 0 || joins == 0 {
		t.Fatalf("%d kills: %d during a save, %d snapshots pruned, %d restarts seen to continue the chain: what the test means to prove was not reached", kills, inSave, prunes, joins)
	}

	// The daemons' own election keys are revisions too: capture reaches at least the writer's last.
	_, lastTo := chain(stoppedAt)
	if lastTo < last {
		t.Fatalf("the delta segments reach revision %d, not the writer's last %d", lastTo, last)
	}
	list := listedVerified(t, env, verified)
	oldest := list[len(list)-1]
	// A snapshot the last daemon took after capture's last flush may reach a little further.
	last = max(lastTo, list[0].Revision)
	tl := decodeJSON[struct {
		Spans      []delta.Span   `json:"spans"`
		Restorable []delta.Window `json:"restorable"`
	}](t, run(t, env, "timeline", "-o", "json"))
	for _, s := range tl.Spans {
		if s.Kind == "gap" {
			t.Fatalf("timeline shows a gap: %+v", s)
		}
	}
	if len(tl.Restorable) != 1 || tl.Restorable[0].FirstRev != oldest.Revision || tl.Restorable[0].LastRev != last {
		t.Fatalf("restorable: %+v, want revisions %d to %d", tl.Restorable, oldest.Revision, last)
	}

	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	mid := oldest.Revision + 1 + rng.Int64N(last-oldest.Revision)
	for _, rev := range []int64{last, mid} {
		dataDir := filepath.Join(t.TempDir(), "r.etcd")
		r := run(t, env, "restore", "--revision", fmt.Sprint(rev), "--name", "r", "--initial-cluster", "r="+peer, "--data-dir", dataDir)
		if r.code != 0 {
			t.Fatalf("restore --revision %d: exit %d\n%s", rev, r.code, r.stderr)
		}
		p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
		if err := p.WaitHealthy(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		sameKeys(t, must(newClient(t, []string{p.Endpoint()}).Get(ctx, "", clientv3.WithFromKey())).Kvs,
			must(cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))).Kvs)
		p.Stop()
	}
	t.Logf("daemon: %d kills (%d during a save, %d just after a prune deleted), %d snapshots pruned, %d verified; %d restarts seen to continue the chain at the next revision; restores at %d and %d equal etcd; took %s",
		kills, inSave, inPrune, prunes, len(verified), joins, last, mid, time.Since(start).Round(time.Millisecond))
	testharness.RecordFault(t, testharness.FaultRow{
		Area: "daemon --delta (file://)", Fault: fmt.Sprintf("kill -9 at a random point while saving, pruning and capturing (seed %d)", seed), Tries: kills,
		Result: fmt.Sprintf("every listed snapshot verified (%d); the delta chain had no gap and no duplicate after every kill, and %d restarts were seen to continue it at the next revision; "+
			"restores at the last revision and a random one equal etcd key for key (%d kills during a save, %d just after retention deleted a snapshot, %d snapshots pruned)", len(verified), joins, inSave, inPrune, prunes),
	})
}
