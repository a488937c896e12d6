package guard

import (
	"context"
	"errors"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Every planned key deleted between a confirm's read and its delete. By someone else: the
// confirm's delete runs, removes nothing, and is recorded so, with every saved key
// dropped (undo puts back none). By another confirm of the plan, whose delete writes its
// attempt to the marker: this one's compare fails, it refuses saying the plan is
// executed, and its own saved copy goes.
func TestConfirmAfterOthersEmptiedTheRange(t *testing.T) {
	ctx := context.Background()
	for _, another := range []bool{false, true} {
		e := newEnv(t)
		r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
		p := e.plan(t, r)
		hook(t, &beforeDelete, func(context.Context) {
			ops := []clientv3.Op{clientv3.OpDelete(r.Start, clientv3.WithRange(r.End))}
			if another { // what the confirm that won wrote in its transaction
				ops = append(ops, clientv3.OpPut(markerKey("c1", p.ID), "a-0000000000ff"))
			}
			if _, err := e.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Error(err)
			}
		})
		ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
		if another {
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "it is executed") {
				t.Fatalf("a confirm that lost to another: %+v, %v; want a refusal saying the plan is executed", ex, err)
			}
			if copies, err := savedCopies(ctx, e.st, "c1", p.ID); err != nil || len(copies) != 0 {
				t.Errorf("the confirm that lost left its saved copy: %v %v", copies, err)
			}
			continue
		}
		if err != nil || ex.Deleted != 0 || ex.DeletedByOthers != p.KeyCount {
			t.Fatalf("a confirm whose range others emptied: %+v, %v; want 0 deleted, all %d by others", ex, err, p.KeyCount)
		}
		if saved := e.savedKeys(t, e.st, p.ID); len(saved) != 0 {
			t.Errorf("undo would put back %d keys others deleted", len(saved))
		}
	}
}

// A confirm that reads the range after another confirm of the plan deleted it, but before
// that one recorded its execution, says the plan is executed: "the range changed, run
// --dry-run again" would send the operator to plan a delete that already happened.
func TestConfirmReadingAfterAnotherDeleted(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
	p := e.plan(t, r)
	parked, release := make(chan struct{}), make(chan struct{})
	var scans int
	hook(t, &beforeScan, func(context.Context) {
		if scans++; scans == 1 { // the second confirm, started first, waits here
			close(parked)
			<-release
		}
	})
	hook(t, &afterDelete, func(context.Context) { close(release) })
	type result struct {
		ex  *Execution
		err error
	}
	second := make(chan result, 1)
	go func() {
		ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
		second <- result{ex, err}
	}()
	<-parked
	ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
	if err != nil || ex.Deleted != p.KeyCount {
		t.Fatalf("the first confirm: %+v, %v; want all %d keys deleted", ex, err, p.KeyCount)
	}
	got := <-second
	if !errors.Is(got.err, ErrRefused) || !strings.Contains(got.err.Error(), "it is executed") {
		t.Errorf("the confirm that read the range after the other's delete: %+v, %v; want a refusal saying the plan is executed", got.ex, got.err)
	}
	if saved := e.savedKeys(t, e.st, p.ID); int64(len(saved)) != p.KeyCount {
		t.Errorf("the saved copy holds %d keys, want all %d", len(saved), p.KeyCount)
	}
}
