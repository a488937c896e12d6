package guard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// hook sets a confirm hook for one test.
func hook(t *testing.T, h *func(context.Context), f func(context.Context)) {
	old := *h
	*h = f
	t.Cleanup(func() { *h = old })
}

func (e *env) savedKeys(t *testing.T, id string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	if err := readEntries(context.Background(), e.st, deletedKey("c1", id), func(en entry) error {
		out[string(en.Key)] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// A key someone else deletes between the confirm's read and its delete transaction is
// not saved, so undo never recreates what a controller removed on purpose.
func TestConfirmWithConcurrentDeleter(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
	p := e.plan(t, r)
	victims := []string{p.FirstKey, p.Sample[4], p.LastKey}
	hook(t, &beforeDelete, func(context.Context) {
		for _, k := range victims {
			if _, err := e.cli.Delete(ctx, k); err != nil {
				t.Error(err)
			}
		}
	})
	ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
	if err != nil {
		t.Fatal(err)
	}
	saved := e.savedKeys(t, p.ID)
	if ex.Deleted != p.KeyCount-3 || ex.DeletedByOthers != 3 || int64(len(saved)) != ex.Deleted {
		t.Fatalf("deleted %d (by others %d) of %d planned; %d saved", ex.Deleted, ex.DeletedByOthers, p.KeyCount, len(saved))
	}
	for _, k := range victims {
		if saved[k] {
			t.Errorf("%s, deleted by someone else, is in the saved copy", k)
		}
	}
	u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	all := e.all(t)
	if u.Restored != ex.Deleted || e.count(t, r) != ex.Deleted {
		t.Fatalf("undo restored %d, %d keys in the range, %d deleted", u.Restored, e.count(t, r), ex.Deleted)
	}
	for _, k := range victims {
		if _, ok := all[k]; ok {
			t.Errorf("undo recreated %s, which someone else deleted", k)
		}
	}
}

// A confirm interrupted after saving the keys says what it left, and so does the next
// confirm, undo and plan listing, from what etcd holds.
func TestConfirmInterrupted(t *testing.T) {
	tests := []struct {
		name          string
		before, after bool // cancel before the delete, after it
		othersDelete  bool
		wantErr       string
		deleted       bool
	}{
		{name: "before the delete", before: true, wantErr: "etcd deleted nothing: the plan can be confirmed again"},
		{name: "after the delete", after: true, wantErr: "recording the plan as executed failed", deleted: true},
		{name: "after the delete, keys deleted by others", after: true, othersDelete: true, wantErr: "etcd deleted %d keys at revision", deleted: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
			p := e.plan(t, r)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			victim := p.Sample[2]
			hook(t, &beforeDelete, func(context.Context) {
				if tc.othersDelete {
					e.cli.Delete(context.Background(), victim)
				}
				if tc.before {
					cancel()
				}
			})
			hook(t, &afterDelete, func(context.Context) {
				if tc.after {
					cancel()
				}
			})
			_, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
			if want := strings.Replace(tc.wantErr, "%d", fmt.Sprint(p.KeyCount-1), 1); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("interrupted confirm: %v; want %q", err, want)
			}
			t.Log(err)
			if got := e.count(t, r); (got == 0) != tc.deleted {
				t.Fatalf("%d keys left in the range", got)
			}
			beforeDelete, afterDelete = func(context.Context) {}, func(context.Context) {}
			plans, _ := Plans(context.Background(), e.st, "c1")
			if tc.deleted {
				if len(plans) != 1 || plans[0].State != "interrupted" && plans[0].State != "executed" {
					t.Fatalf("plans: %+v", plans)
				}
				_, err := Confirm(context.Background(), e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "executed") {
					t.Fatalf("confirm again: %v", err)
				}
				want := p.KeyCount
				if tc.othersDelete {
					want--
				}
				if saved := e.savedKeys(t, p.ID); int64(len(saved)) != want || saved[victim] != !tc.othersDelete {
					t.Fatalf("%d keys saved, want %d; the key others deleted is saved: %v", len(saved), want, saved[victim])
				}
				u, err := Undo(context.Background(), e.cli, e.st, "c1", p.ID, UndoOptions{})
				if err != nil || u.Restored != want {
					t.Fatalf("undo: %+v, %v", u, err)
				}
				return
			}
			// what etcd said is recorded: the saved copy is gone, so no later undo can take it
			// for a delete that happened
			if len(plans) != 1 || plans[0].State != "planned" {
				t.Fatalf("plans: %+v", plans)
			}
			if _, err := Undo(context.Background(), e.cli, e.st, "c1", p.ID, UndoOptions{}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not executed") {
				t.Fatalf("undo of a plan never executed: %v", err)
			}
			ex, err := Confirm(context.Background(), e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
			if err != nil || ex.Deleted != p.KeyCount || e.count(t, r) != 0 {
				t.Fatalf("confirm again: %+v, %v", ex, err)
			}
		})
	}
}

// Undo gives keys that had a lease a live lease: the original while it exists, else a
// new one with the TTL the original had.
func TestUndoRestoresLeases(t *testing.T) {
	for _, gone := range []bool{false, true} {
		t.Run(map[bool]string{false: "lease alive", true: "lease gone"}[gone], func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t)
			l, err := e.cli.Grant(ctx, 600)
			if err != nil {
				t.Fatal(err)
			}
			keys := []string{"/registry-kube-1/events/ns1/e1", "/registry-kube-1/events/ns1/e2", "/registry-kube-1/events/ns1/e3"}
			for _, k := range keys {
				if _, err := e.cli.Put(ctx, k, "event", clientv3.WithLease(l.ID)); err != nil {
					t.Fatal(err)
				}
			}
			r, _ := Interpret([]string{"/registry-kube-1/events/ns1/"}, true, false)
			p := e.plan(t, r)
			if _, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); err != nil {
				t.Fatal(err)
			}
			if gone {
				if _, err := e.cli.Revoke(ctx, l.ID); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				resp, err := e.cli.Get(ctx, k)
				if err != nil || len(resp.Kvs) != 1 {
					t.Fatalf("%s after undo: %v, %v", k, resp, err)
				}
				lease := clientv3.LeaseID(resp.Kvs[0].Lease)
				ttl, err := e.cli.TimeToLive(ctx, lease)
				if err != nil || ttl.TTL <= 0 || ttl.GrantedTTL != 600 || (lease == l.ID) == gone {
					t.Fatalf("%s came back with lease %x (original %x): %+v, %v", k, lease, l.ID, ttl, err)
				}
			}
		})
	}
}

// A confirm interrupted after etcd deleted the range, and etcd compacts (kube-apiserver
// does every 5 minutes) before the operator runs undo: the revisions that would tell
// whether the delete ran are gone, but the saved keys still come back, and a second
// confirm refuses, pointing at undo.
func TestUndoInterruptedAfterCompaction(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
	p := e.plan(t, r)
	planned := e.count(t, r)
	for i := range 50 { // a live cluster writes on between plan and confirm
		if _, err := e.cli.Put(ctx, fmt.Sprintf("/registry-kube-1/events/x%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hook(t, &afterDelete, func(context.Context) { cancel() })
	if _, err := Confirm(cctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); err == nil {
		t.Fatal("the interrupted confirm reported success")
	}
	afterDelete = func(context.Context) {}
	if e.count(t, r) != 0 {
		t.Fatal("etcd did not delete the range")
	}
	for i := range 50 {
		if _, err := e.cli.Put(ctx, fmt.Sprintf("/registry-kube-1/events/y%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	now, err := e.cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.Compact(ctx, now.Header.Revision-10, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if _, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "guard undo") {
		t.Fatalf("confirm again after compaction: %v", err)
	}
	// Whether the plan or the keys' owners deleted them cannot be told any more: undo says
	// so and puts back nothing, unless told to assume the plan did.
	if _, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "--assume-executed") {
		t.Fatalf("undo after compaction: %v", err)
	}
	u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{AssumeExecuted: true})
	if err != nil {
		t.Fatalf("undo --assume-executed after compaction: %v", err)
	}
	if u.Restored != planned || e.count(t, r) != planned {
		t.Fatalf("undo restored %d keys, %d in the range; the plan had %d", u.Restored, e.count(t, r), planned)
	}
}

// A confirm interrupted before its delete, then the keys' owners delete them and etcd
// compacts: undo never recreates them (the plan deleted nothing, which was known when the
// confirm stopped).
func TestUndoNeverRecreatesOwnersDeletes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
	p := e.plan(t, r)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hook(t, &beforeDelete, func(context.Context) { cancel() })
	if _, err := Confirm(cctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); err == nil || !strings.Contains(err.Error(), "etcd deleted nothing") {
		t.Fatalf("confirm interrupted before its delete: %v", err)
	}
	beforeDelete = func(context.Context) {}
	del, err := e.cli.Delete(ctx, r.Start, clientv3.WithRange(r.End)) // the owners
	if err != nil || del.Deleted == 0 {
		t.Fatalf("owners' delete: %v", err)
	}
	if _, err := e.cli.Compact(ctx, del.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	for _, o := range []UndoOptions{{}, {AssumeExecuted: true}} {
		if _, err := Undo(ctx, e.cli, e.st, "c1", p.ID, o); !errors.Is(err, ErrRefused) {
			t.Fatalf("undo %+v of a plan that deleted nothing: %v", o, err)
		}
	}
	if n := e.count(t, r); n != 0 {
		t.Fatalf("undo recreated %d keys their owners deleted", n)
	}
}
