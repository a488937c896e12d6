package guard

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/store"
)

// killedAt runs a confirm of p that stops dead at hook h, as kill -9 would leave it.
func killedAt(t *testing.T, e *env, h *func(context.Context), p *Plan) {
	t.Helper()
	hook(t, h, func(context.Context) { runtime.Goexit() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		Confirm(context.Background(), e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
	}()
	<-done
	*h = func(context.Context) {}
}

// A confirm killed after saving the keys, before its delete: whatever then deletes the
// keys (their owner, a lease expiring: one revision that empties the range, as the plan's
// delete would) is not the plan's, and undo refuses instead of recreating them. Killed
// after its delete, the plan is executed and undo puts every key back.
func TestKilledConfirmIsSettledByTheMarker(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		at       *func(context.Context)
		meantime func(t *testing.T, e *env, r Range, lease clientv3.LeaseID)
		executed bool
	}{
		{name: "before the delete, then the owner deletes", at: &beforeDelete, meantime: func(t *testing.T, e *env, r Range, _ clientv3.LeaseID) {
			if _, err := e.cli.Delete(ctx, r.Start, clientv3.WithRange(r.End)); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "before the delete, then the lease expires", at: &beforeDelete, meantime: func(t *testing.T, e *env, _ Range, lease clientv3.LeaseID) {
			if _, err := e.cli.Revoke(ctx, lease); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "after the delete", at: &afterDelete, executed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			l, err := e.cli.Grant(ctx, 600)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"/events/ns/a", "/events/ns/b"} {
				if _, err := e.cli.Put(ctx, k, "ev", clientv3.WithLease(l.ID)); err != nil {
					t.Fatal(err)
				}
			}
			r, _ := Interpret([]string{"/events/ns/"}, true, false)
			p := e.plan(t, r)
			killedAt(t, e, tc.at, p)
			if tc.meantime != nil {
				tc.meantime(t, e, r, l.ID)
			}
			if s, err := planState(ctx, e.st, p); err != nil || s != "interrupted" {
				t.Fatalf("after the kill the plan is %q (%v), want interrupted", s, err)
			}
			u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{})
			if !tc.executed {
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "never executed") {
					t.Fatalf("undo of a plan whose confirm deleted nothing: %+v, %v", u, err)
				}
				if n := e.count(t, r); n != 0 {
					t.Fatalf("undo recreated %d keys the plan never deleted", n)
				}
				if copies, err := savedCopies(ctx, e.st, "c1", p.ID); err != nil || len(copies) != 0 {
					t.Fatalf("the killed confirm's copy is left: %v %v", copies, err)
				}
				return
			}
			if err != nil || u.Restored != p.KeyCount || e.count(t, r) != p.KeyCount {
				t.Fatalf("undo after a confirm killed after its delete: %+v, %v; want all %d keys back", u, err, p.KeyCount)
			}
		})
	}
}

// A confirm whose delete fails (a stalled member, its timeout) while a second confirm of
// the plan is between its save and its delete: the first settles, which cancels the
// second (its delete then fails on the marker) instead of removing the copy the second
// deletes after. Nothing is deleted unsaved, and a third confirm deletes and saves all.
func TestFailedConfirmBesideAnother(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
	p := e.plan(t, r)
	type who struct{}
	ctxA, cancelA := context.WithCancel(context.WithValue(ctx, who{}, "A"))
	aParked, bParked, aDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	hook(t, &beforeDelete, func(c context.Context) {
		switch c.Value(who{}) {
		case "A":
			close(aParked)
			<-bParked
			cancelA() // A's delete fails
		case "B":
			close(bParked)
			<-aDone
		}
	})
	var errA error
	go func() {
		_, errA = Confirm(ctxA, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
		close(aDone)
	}()
	<-aParked
	exB, errB := Confirm(context.WithValue(ctx, who{}, "B"), e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
	if errA == nil || !strings.Contains(errA.Error(), "etcd deleted nothing") {
		t.Fatalf("confirm A, whose delete failed: %v", errA)
	}
	if !errors.Is(errB, ErrRefused) || !strings.Contains(errB.Error(), "nothing was deleted: confirm again") {
		t.Fatalf("confirm B, cancelled by A's settling: %+v, %v", exB, errB)
	}
	if n := e.count(t, r); n != p.KeyCount {
		t.Fatalf("%d of %d keys left after two confirms that deleted nothing", n, p.KeyCount)
	}
	ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
	if err != nil || ex.Deleted != p.KeyCount {
		t.Fatalf("a third confirm: %+v, %v", ex, err)
	}
	if u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{}); err != nil || u.Restored != p.KeyCount {
		t.Fatalf("undo: %+v, %v; want all %d keys back", u, err, p.KeyCount)
	}
}

// A planned key updated (not deleted) while confirming: nothing is deleted, the refusal
// says a key was written, and the plan is left as planned, not interrupted.
func TestConfirmWhileAKeyIsUpdated(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	k := "/registry-kube-1/configmaps/default/busy"
	if _, err := e.cli.Put(ctx, k, "v1"); err != nil {
		t.Fatal(err)
	}
	r, _ := Interpret([]string{k}, false, false)
	p := e.plan(t, r)
	hook(t, &beforeDelete, func(context.Context) { e.cli.Put(ctx, k, "v2") })
	_, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "a key in the range was written while confirming") {
		t.Fatalf("confirm while a key is updated: %v", err)
	}
	if s, err := planState(ctx, e.st, p); err != nil || s != "planned" {
		t.Fatalf("plan state %q (%v), want planned", s, err)
	}
	if n := e.count(t, r); n != 1 {
		t.Fatalf("%d keys left, want 1", n)
	}
}

// A copy saved by an etcdguard before the marker: whether its confirm deleted cannot be
// told, so confirm and undo refuse, and undo --assume-executed puts back the missing keys.
func TestLegacySavedCopy(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
	p := e.plan(t, r)
	killedAt(t, e, &afterDelete, p)
	copies, err := savedCopies(ctx, e.st, "c1", p.ID)
	if err != nil || len(copies) != 1 {
		t.Fatalf("saved copies %v, %v", copies, err)
	}
	for _, c := range copies { // as an older etcdguard named it
		b, err := store.ReadAll(ctx, e.st, c, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.PutBytes(ctx, e.st, deletedPrefix("c1", p.ID)+"jsonl.zst", b); err != nil {
			t.Fatal(err)
		}
		if err := e.st.Delete(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); !strings.Contains(fmtErr(err), "whether it deleted them cannot be told") {
		t.Fatalf("confirm over a legacy copy: %v", err)
	}
	if _, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{}); !errors.Is(err, errCannotTell) || !strings.Contains(err.Error(), "--assume-executed") {
		t.Fatalf("undo over a legacy copy: %v", err)
	}
	if u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{AssumeExecuted: true}); err != nil || u.Restored != p.KeyCount {
		t.Fatalf("undo --assume-executed: %+v, %v", u, err)
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// A range holding any key of the confirms' records is refused at the dry run: deleting
// them would make interrupted confirms impossible to settle.
func TestRangeHoldingTheRecords(t *testing.T) {
	e := newEnv(t)
	for _, args := range [][]string{{"/"}, {"/etcdguard/"}, {"/etcdguard/c1/guard/p-x"}} {
		r, _ := Interpret(args, true, false)
		if _, err := MakePlan(context.Background(), e.cli, e.st, r, PlanOptions{Cluster: "c1", TTL: 60e9}); err == nil || !strings.Contains(err.Error(), "where each confirm records its delete") {
			t.Errorf("a plan of %s: %v", r, err)
		}
	}
	r, _ := Interpret([]string{"/etcdguard/c2/"}, true, false) // another cluster's
	if _, err := MakePlan(context.Background(), e.cli, e.st, r, PlanOptions{Cluster: "c1", TTL: 60e9}); err != nil {
		t.Errorf("a plan of %s: %v", r, err)
	}
}

// Someone deletes the marker of a plan whose confirm was killed. After its delete: which
// copy holds what was deleted is then unknown to etcd, so undo refuses (never "nothing to
// undo", which would lose the copy) until told --assume-executed. Before its delete, the
// planned keys still there prove nothing was deleted.
func TestMarkerDeletedAfterAKill(t *testing.T) {
	ctx := context.Background()
	for _, executed := range []bool{true, false} {
		e := newEnv(t)
		r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
		p := e.plan(t, r)
		at := &beforeDelete
		if executed {
			at = &afterDelete
		}
		killedAt(t, e, at, p)
		if _, err := e.cli.Delete(ctx, markerKey("c1", p.ID)); err != nil {
			t.Fatal(err)
		}
		_, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{})
		if !executed {
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "never executed") {
				t.Fatalf("undo after a kill before the delete and the marker deleted: %v", err)
			}
			continue
		}
		if !errors.Is(err, errCannotTell) || !strings.Contains(err.Error(), "--assume-executed") {
			t.Fatalf("undo after a kill after the delete and the marker deleted: %v", err)
		}
		if u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{AssumeExecuted: true}); err != nil || u.Restored != p.KeyCount {
			t.Fatalf("undo --assume-executed: %+v, %v; want all %d keys back", u, err, p.KeyCount)
		}
	}
}

// A range bound that is not UTF-8 is refused at the dry run, saying what to give instead,
// rather than planned and never confirmable; a UTF-8 prefix around such keys plans and
// confirms them.
func TestBoundsNotUTF8(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	for _, k := range []string{"/bin/a\xff", "/bin/\xffz"} {
		if _, err := e.cli.Put(ctx, k, "x"); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		key    string
		prefix bool
	}{{"/bin/a\xff", false}, {"/bin/\xff", true}} {
		r, _ := Interpret([]string{tc.key}, tc.prefix, false)
		if _, err := MakePlan(ctx, e.cli, e.st, r, PlanOptions{Cluster: "c1", TTL: 60e9}); err == nil || !strings.Contains(err.Error(), "not valid UTF-8") {
			t.Errorf("a plan of %s: %v", r, err)
		}
	}
	r, _ := Interpret([]string{"/bin/"}, true, false)
	p := e.plan(t, r)
	if ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); err != nil || ex.Deleted != 2 {
		t.Fatalf("confirm of %s: %+v, %v", r, ex, err)
	}
}
