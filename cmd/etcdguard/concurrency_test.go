package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
)

// Two saves started together on one cluster and store make two snapshots: distinct ids
// and objects, both listed, both verify; neither overwrote the other. IDs have one-second
// resolution, so the pair is started again (up to 3 times) until both fall in one second.
func TestConcurrentSavesSameSecond(t *testing.T) {
	e := testharness.StartEtcd(t)
	putKeys(t, e.Client(t), "/registry/configmaps/default/", 300)
	for _, backend := range []string{"file", "versitygw"} {
		t.Run(backend, func(t *testing.T) {
			env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_CLUSTER=prod"}
			if backend == "file" {
				env = append(env, "ETCDGUARD_STORE=file://"+t.TempDir())
			} else {
				srv := testharness.StartVersityGW(t)
				env = append(append(env, srv.Env()...), "ETCDGUARD_STORE="+srv.URL("team"))
			}
			var all []snapshot.Manifest
			tries := 0
			for sameSecond := false; !sameSecond && tries < 3; tries++ {
				a := startBG(t, env, "snapshot", "save", "-o", "json")
				b := startBG(t, env, "snapshot", "save", "-o", "json")
				ma := decodeJSON[snapshot.Manifest](t, a.wait(t, 60*time.Second))
				mb := decodeJSON[snapshot.Manifest](t, b.wait(t, 60*time.Second))
				sameSecond = ma.ID[:16] == mb.ID[:16]
				t.Logf("try %d: %s and %s", tries, ma.ID, mb.ID)
				if ma.ID == mb.ID || ma.Object == mb.Object {
					t.Fatalf("two saves made one snapshot: %s %s, objects %s %s", ma.ID, mb.ID, ma.Object, mb.Object)
				}
				all = append(all, ma, mb)
			}
			list := decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json"))
			if len(list) != len(all) {
				t.Fatalf("%d saves, %d listed", len(all), len(list))
			}
			listed := map[string]snapshot.Manifest{}
			for _, m := range list {
				listed[m.ID] = m
			}
			for _, m := range all {
				l, ok := listed[m.ID]
				if !ok || l.SHA256 != m.SHA256 || l.Object != m.Object || l.StoredSize != m.StoredSize {
					t.Fatalf("snapshot %s: saved %+v, listed %+v", m.ID, m, l)
				}
				if rep := decodeJSON[snapshot.VerifyReport](t, run(t, env, "snapshot", "verify", m.ID, "-o", "json")); !rep.OK {
					t.Fatalf("verify %s: %+v", m.ID, rep)
				}
			}
			testharness.RecordFault(t, testharness.FaultRow{Area: "snapshot save", Fault: "two saves started together (" + backend + " store)", Tries: tries,
				Result: "nothing lost; two distinct snapshots, both listed, both verify"})
		})
	}
}

// A prune run while a save streams never deletes the snapshot being written (it has no
// manifest yet, so retention cannot see it) nor the newest verified one; prunes at three
// points of the stream, each with the stream held by the proxy, so that the save cannot
// finish (and rightly become the newest) while a prune runs on a slow machine.
func TestConcurrentPruneDuringSave(t *testing.T) {
	c := testharness.StartEtcdCluster(t, 1)
	loadCluster(t, c.Client(t), faultLoad)
	ps, urls := proxies(t, c, 0)
	dir := t.TempDir()
	env := []string{"ETCDGUARD_ENDPOINTS=" + urls[0], "ETCDGUARD_STORE=file://" + dir, "ETCDGUARD_CLUSTER=prod"}
	save := func() snapshot.Manifest {
		return decodeJSON[snapshot.Manifest](t, run(t, env, "snapshot", "save", "-o", "json"))
	}
	verified := save()
	if rep := decodeJSON[snapshot.VerifyReport](t, run(t, env, "snapshot", "verify", verified.ID, "-o", "json")); !rep.OK {
		t.Fatalf("verify: %+v", rep)
	}
	time.Sleep(time.Second) // distinct seconds, so "newest" is unambiguous
	newest := save()

	// The prunes talk to the member directly: the proxy holds the save's stream meanwhile.
	direct := append(slices.Clone(env[1:]), "ETCDGUARD_ENDPOINTS="+c.Endpoints()[0])
	ps[0].rate.Store(faultRate)
	base := ps[0].down.Load()
	bg := startBG(t, env, "snapshot", "save", "-o", "json")
	pruned := 0
	for _, at := range []int64{256 << 10, 2 << 20, 4 << 20} {
		waitFor(t, 20*time.Second, "the save to stream", func() bool { return ps[0].down.Load()-base > at })
		ps[0].paused.Store(true)
		select {
		case <-bg.done:
			t.Fatalf("the save ended before the prune at %d KiB", at>>10)
		default:
		}
		r := run(t, direct, "snapshot", "prune", "--keep-last", "1", "-o", "json")
		ps[0].paused.Store(false)
		if r.code != 0 {
			t.Fatalf("prune during a save: exit %d %s", r.code, r.stderr)
		}
		var ds []snapshot.Decision
		if err := json.Unmarshal([]byte(r.stdout), &ds); err != nil {
			t.Fatalf("prune output: %v\n%s", err, r.stdout)
		}
		pruned++
		for _, d := range ds {
			if !d.Keep && (d.ID == verified.ID || d.ID == newest.ID) {
				t.Fatalf("prune during a save deleted %s (the newest verified %s, the newest %s)", d.ID, verified.ID, newest.ID)
			}
		}
	}
	m := decodeJSON[snapshot.Manifest](t, bg.wait(t, 30*time.Second))
	ids := map[string]bool{}
	for _, l := range listSnapshots(t, dir, "prod") {
		ids[l.ID] = true
	}
	if !ids[m.ID] || !ids[verified.ID] || !ids[newest.ID] {
		t.Fatalf("after prunes during a save: listed %v, want the new %s, the newest verified %s and the newest before it %s", ids, m.ID, verified.ID, newest.ID)
	}
	if _, err := os.Stat(filepath.Join(dir, m.Object)); err != nil {
		t.Fatalf("the snapshot written during the prunes: %v", err)
	}
	if rep := decodeJSON[snapshot.VerifyReport](t, run(t, env, "snapshot", "verify", m.ID, "-o", "json")); !rep.OK {
		t.Fatalf("verify the snapshot written during the prunes: %+v", rep)
	}
	testharness.RecordFault(t, testharness.FaultRow{Area: "snapshot prune", Fault: "prune --keep-last 1 while a save streams", Tries: pruned,
		Result: "nothing lost; the snapshot being written and the newest verified one are kept; the new snapshot verifies"})
}

// Two `del --confirm` of one plan at once: exactly one deletes, the other refuses and
// says why; the keys are deleted and saved once, with one audit record of the delete.
// Repeated with the second started 0, 10, 30, 60 and 150 ms after the first.
func TestConcurrentConfirmsOfOnePlan(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	dir := t.TempDir()
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_STORE=file://" + dir, "ETCDGUARD_CLUSTER=prod", "ETCDGUARD_LOG_LEVEL=warn"}
	const n = 300
	for try, offset := range []time.Duration{0, 10 * time.Millisecond, 30 * time.Millisecond, 60 * time.Millisecond, 150 * time.Millisecond} {
		prefix := "/registry/secrets/try" + string(rune('a'+try)) + "/"
		putKeys(t, cli, prefix, n)
		p := decodeJSON[planOut](t, run(t, env, "del", prefix, "--prefix", "--dry-run", "-o", "json"))
		a := startBG(t, env, "del", "--confirm", p.PlanID)
		time.Sleep(offset)
		b := startBG(t, env, "del", "--confirm", p.PlanID)
		ra, rb := a.wait(t, 30*time.Second), b.wait(t, 30*time.Second)
		t.Logf("try %d (+%s): exits %d and %d: %q %q", try, offset, ra.code, rb.code, strings.TrimSpace(ra.stdout+ra.stderr), strings.TrimSpace(rb.stdout+rb.stderr))
		ok, refused := ra, rb
		if ra.code != 0 {
			ok, refused = rb, ra
		}
		if ok.code != 0 || refused.code == 0 {
			t.Fatalf("try %d: exits %d and %d, want exactly one 0", try, ra.code, rb.code)
		}
		if !strings.Contains(ok.stdout, "deleted 300 keys") {
			t.Fatalf("try %d: the confirm that succeeded says %q", try, ok.stdout)
		}
		if line := refused.errorLine(t); refused.code != exitRefused || !strings.Contains(line, p.PlanID) || !strings.Contains(line, "executed") {
			t.Fatalf("try %d: the other confirm: exit %d %q, want %d saying plan %s is executed", try, refused.code, line, exitRefused, p.PlanID)
		}
		if left := countKeys(t, cli, prefix); left != 0 {
			t.Fatalf("try %d: %d keys left", try, left)
		}
		// One record of the delete; the refusal may be audited too.
		audits, _ := filepath.Glob(filepath.Join(dir, "prod", "guard", "audit", "*-"+p.PlanID+"-confirm.json"))
		if len(audits) != 1 {
			t.Fatalf("try %d: %d audit records of the delete: %v", try, len(audits), audits)
		}
		// Saved once, and what was saved is what was deleted.
		if r := run(t, env, "guard", "undo", p.PlanID); r.code != 0 || !strings.Contains(r.stdout, "300") || countKeys(t, cli, prefix) != n {
			t.Fatalf("try %d: undo: exit %d %s%s; %d keys back", try, r.code, r.stdout, r.stderr, countKeys(t, cli, prefix))
		}
	}
	testharness.RecordFault(t, testharness.FaultRow{Area: "del --confirm", Fault: "two confirms of one plan at once", Tries: 5,
		Result: "nothing lost; exactly one deletes, the other refuses (plan executed); one audit record; undo restores every key"})
}
