package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/store"
)

// hook sets a confirm hook for one test.
func hook(t *testing.T, h *func(context.Context), f func(context.Context)) {
	old := *h
	*h = f
	t.Cleanup(func() { *h = old })
}

// savedKeys are the keys undo would put back: the saved copy, read through st, less those
// listed as deleted by others.
func (e *env) savedKeys(t *testing.T, st store.Store, id string) map[string]bool {
	t.Helper()
	ctx := context.Background()
	var ex Execution
	if b, err := store.ReadAll(ctx, st, stateKey("c1", id, "executed"), 1<<20); err != nil || json.Unmarshal(b, &ex) != nil {
		t.Fatalf("plan %s's record of its delete: %v", id, err)
	}
	key := ex.SavedTo
	dropped, err := droppedKeys(ctx, st, "c1", id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	if err := readEntries(ctx, st, key, func(en entry) error {
		if !dropped[string(en.Key)] {
			out[string(en.Key)] = true
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// A key someone else deletes between the confirm's read and its delete transaction is
// not saved, so undo never recreates what a controller removed on purpose. With the
// saved copy encrypted, the same holds whether the node that deletes has the identity
// (the copy is rewritten, encrypted) or not (the keys are listed for undo to skip).
func TestConfirmWithConcurrentDeleter(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(t.TempDir(), "id")
	if err := os.WriteFile(idFile, []byte(id.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	to, err := crypt.ParseRecipients([]string{id.Recipient().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := crypt.LoadIdentities(idFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name              string
		confirmID, undoID bool // which side holds the identity
		encrypted         bool
	}{
		{name: "in the clear"},
		{name: "encrypted, identity where it deletes", encrypted: true, confirmID: true, undoID: true},
		{name: "encrypted, identity only where it undoes", encrypted: true, undoID: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			confirmSt, undoSt := e.st, e.st
			if tc.encrypted {
				confirmSt, undoSt = crypt.Wrap(e.st, to, nil), crypt.Wrap(e.st, nil, ids)
				if tc.confirmID {
					confirmSt = crypt.Wrap(e.st, to, ids)
				}
			}
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
			ex, err := Confirm(ctx, e.cli, confirmSt, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
			if err != nil {
				t.Fatal(err)
			}
			saved := e.savedKeys(t, undoSt, p.ID)
			if ex.Deleted != p.KeyCount-3 || ex.DeletedByOthers != 3 || int64(len(saved)) != ex.Deleted {
				t.Fatalf("deleted %d (by others %d) of %d planned; %d saved", ex.Deleted, ex.DeletedByOthers, p.KeyCount, len(saved))
			}
			for _, k := range victims {
				if saved[k] {
					t.Errorf("%s, deleted by someone else, is in the saved copy", k)
				}
			}
			// A one-off delete never decides that the cluster's backups are encrypted (the
			// daemon's saves would be refused from then on).
			if _, err := e.st.Stat(ctx, "c1/encryption.json"); !errors.Is(err, store.ErrNotExist) {
				t.Errorf("a confirm recorded the cluster's encryption: %v", err)
			}
			// Nothing with a value is stored in the clear.
			objs, err := e.st.List(ctx, "c1/guard/deleted/")
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if tc.encrypted && !strings.HasSuffix(o.Key, store.EncryptedExt) && o.Key != droppedKey("c1", p.ID) {
					t.Errorf("%s is stored in the clear", o.Key)
				}
				if strings.Contains(o.Key, ".reconciling") {
					t.Errorf("%s, a temporary copy, was left", o.Key)
				}
			}
			u, err := Undo(ctx, e.cli, undoSt, "c1", p.ID, UndoOptions{})
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
		})
	}
}

// Undo of an encrypted saved copy without the identity fails before putting anything back.
func TestUndoEncryptedNeedsTheIdentity(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	to, err := crypt.ParseRecipients([]string{id.Recipient().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	st := crypt.Wrap(e.st, to, nil)
	r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
	p := e.plan(t, r)
	if _, err := Confirm(ctx, e.cli, st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Undo(ctx, e.cli, st, "c1", p.ID, UndoOptions{}); !errors.Is(err, crypt.ErrNoIdentity) || !strings.Contains(err.Error(), id.Recipient().String()) {
		t.Fatalf("undo without the identity: %v, want ErrNoIdentity naming the recipient", err)
	}
	if n := e.count(t, r); n != 0 {
		t.Fatalf("a failed undo put back %d keys", n)
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
				if saved := e.savedKeys(t, e.st, p.ID); int64(len(saved)) != want || saved[victim] != !tc.othersDelete {
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
// does every 5 minutes) before the operator runs undo: the marker its delete wrote still
// tells that it ran, so a second confirm refuses, pointing at undo, and undo puts every
// saved key back.
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
	u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{})
	if err != nil {
		t.Fatalf("undo after compaction: %v", err)
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

// Keys that are not UTF-8 come back from the stored plan's JSON as U+FFFD: its digest
// must still match, and the confirm and undo act on the keys' real bytes.
func TestConfirmKeysNotUTF8(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	keys := []string{"/bin/a\xff", "/bin/b\xc3", "/bin/c"}
	for _, k := range keys {
		if _, err := e.cli.Put(ctx, k, "v-"+k); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := Interpret([]string{"/bin/"}, true, false)
	p := e.plan(t, r)
	if _, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); err != nil {
		t.Fatalf("confirm of a plan over keys that are not UTF-8: %v", err)
	}
	if n := e.count(t, r); n != 0 {
		t.Fatalf("%d keys left after the confirm", n)
	}
	if _, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		resp, err := e.cli.Get(ctx, k)
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v-"+k {
			t.Fatalf("after undo, %q: %v %v", k, resp, err)
		}
	}
}
