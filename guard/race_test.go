package guard

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Every planned key deleted between a confirm's read and its delete (by another confirm of
// the plan, or by someone else): the confirm, which deleted nothing, refuses and records
// nothing, and the saved copy, which may be the other confirm's, is kept whole. When the
// other confirm's execution is recorded meanwhile, the refusal says the plan is executed;
// otherwise the plan is left interrupted, for the next confirm or undo to settle.
func TestConfirmAfterOthersEmptiedTheRange(t *testing.T) {
	defer func(d time.Duration) { executedWait = d }(executedWait)
	executedWait = 300 * time.Millisecond
	ctx := context.Background()
	for _, another := range []bool{false, true} {
		e := newEnv(t)
		r, _ := Interpret([]string{"/registry-kube-1/pods/"}, true, false)
		p := e.plan(t, r)
		hook(t, &beforeDelete, func(context.Context) {
			if _, err := e.cli.Delete(ctx, r.Start, clientv3.WithRange(r.End)); err != nil {
				t.Error(err)
			}
			if another { // what the confirm that won records right after its delete
				if err := markState(ctx, e.st, p, "executed", &Execution{PlanID: p.ID, Deleted: p.KeyCount}); err != nil {
					t.Error(err)
				}
			}
		})
		ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("a confirm whose delete found the range emptied: %+v, %v", ex, err)
		}
		want, state := "deleted while confirming", "interrupted"
		if another {
			want, state = "it is executed", "executed"
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
		if got, err := planState(ctx, e.st, p); err != nil || got != state {
			t.Errorf("plan state %q (%v), want %q", got, err, state)
		}
		if saved := e.savedKeys(t, e.st, p.ID); int64(len(saved)) != p.KeyCount {
			t.Errorf("the saved copy holds %d keys, want all %d: it may be another confirm's", len(saved), p.KeyCount)
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
