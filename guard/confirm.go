package guard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/store"
)

// ErrRefused is wrapped by every refusal to execute a plan.
var ErrRefused = errors.New("refused")

// ConfirmOptions configures Confirm.
type ConfirmOptions struct {
	Cluster        string
	AcceptWarnings bool
	Range          *Range // the range given on the command line, if any: it must be the plan's
	PageSize       int64
	EtcdUser       string
}

// Execution is what a confirmed plan deleted.
type Execution struct {
	PlanID   string `json:"plan_id"`
	Deleted  int64  `json:"deleted"`
	Revision int64  `json:"revision"` // the revision of the delete
	SavedTo  string `json:"saved_to"` // the object holding every deleted key and value
}

// Confirm executes a plan if it is still exactly right: not expired, of this cluster, its
// warnings accepted, and nothing in its range changed since it was made. Every deleted key
// and value is saved to the store first; the delete is one transaction guarded by a
// revision compare over the whole range, so what is deleted is exactly what was saved.
func Confirm(ctx context.Context, cli *clientv3.Client, st store.Store, id string, opts ConfirmOptions) (*Execution, error) {
	p, err := LoadPlan(ctx, st, opts.Cluster, id)
	if err != nil {
		return nil, err
	}
	refuse := func(format string, a ...any) error {
		msg := fmt.Sprintf(format, a...)
		if err := record(ctx, st, Event{Event: "refuse", PlanID: p.ID, Cluster: p.Cluster, EtcdUser: opts.EtcdUser, Range: p.Range, Keys: p.KeyCount, Result: msg}); err != nil {
			return err
		}
		return fmt.Errorf("%w: plan %s: %s", ErrRefused, p.ID, msg)
	}
	switch state, err := planState(ctx, st, p); {
	case err != nil:
		return nil, err
	case state != "planned":
		return nil, refuse("it is %s; make a new plan with --dry-run", state)
	case p.Cluster != opts.Cluster:
		return nil, refuse("it belongs to cluster %s, not %s", p.Cluster, opts.Cluster)
	case opts.Range != nil && (opts.Range.Start != p.Range.Start || opts.Range.End != p.Range.End):
		return nil, refuse("the range given %s is not the plan's %s; give no range with --confirm, or plan this one", opts.Range, p.Range)
	case len(p.Warnings) > 0 && !opts.AcceptWarnings:
		return nil, refuse("it has %d warning(s) (run --dry-run to read them); add --accept-warnings to delete anyway", len(p.Warnings))
	}

	// Read the range now, at revision R, and check it key by key against the plan while
	// saving every key and value.
	saved := deletedKey(p.Cluster, p.ID)
	sw, err := newEntryWriter(ctx, st, saved)
	if err != nil {
		return nil, err
	}
	planned := make(chan entry, 256)
	readErr := make(chan error, 1)
	rctx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	go func() {
		err := readEntries(rctx, st, planKeysKey(p.Cluster, p.ID), func(e entry) error {
			select {
			case planned <- e:
				return nil
			case <-rctx.Done():
				return rctx.Err()
			}
		})
		close(planned)
		readErr <- err
	}()
	errChanged := errors.New("changed")
	var n int64
	rev, err := scanRange(ctx, cli, p.Range, 0, opts.PageSize, false, func(k []byte, mod int64, val []byte, lease int64) error {
		want, ok := <-planned
		if !ok || !bytes.Equal(want.Key, k) || want.Mod != mod {
			return errChanged
		}
		n++
		return sw.write(entry{Key: k, Mod: mod, Value: val, Lease: lease})
	})
	if err == nil {
		if _, more := <-planned; more {
			err = errChanged // a planned key is gone
		}
	}
	stopReading()
	if rerr := <-readErr; err == nil && rerr != nil && !errors.Is(rerr, context.Canceled) {
		err = fmt.Errorf("reading plan %s's keys: %w", p.ID, rerr)
	}
	if err != nil {
		sw.Abort(err)
		if errors.Is(err, errChanged) {
			return nil, refuse("the range changed since the plan; run --dry-run again (planned at revision %d, now at %d)", p.Revision, rev)
		}
		return nil, err
	}
	if err := sw.Close(); err != nil {
		return nil, fmt.Errorf("saving the keys to delete to %s: %w; nothing was deleted", saved, err)
	}

	// One transaction: if no key in the range was written after R, delete the range.
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(p.Range.Start), "<", rev+1).WithRange(p.Range.End)).
		Then(clientv3.OpDelete(p.Range.Start, clientv3.WithRange(p.Range.End))).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("deleting %s: %w (the keys are saved in %s)", p.Range, err, saved)
	}
	if !resp.Succeeded {
		// Nothing was deleted: drop the saved copy, whose presence means "executed".
		if derr := st.Delete(context.WithoutCancel(ctx), saved); derr != nil {
			slog.WarnContext(ctx, "could not remove the saved keys of a delete that did not happen", "object", saved, "err", derr)
		}
		return nil, refuse("a key in the range was written while confirming; nothing was deleted; run --dry-run again")
	}
	deleted := resp.Responses[0].GetResponseDeleteRange().Deleted
	ex := &Execution{PlanID: p.ID, Deleted: deleted, Revision: resp.Header.Revision, SavedTo: saved}
	if err := markState(ctx, st, p, "executed", ex); err != nil {
		return ex, fmt.Errorf("deleted %d keys, saved in %s (`etcdguard guard undo %s` puts them back), but recording the plan as executed failed: %w",
			deleted, saved, p.ID, err)
	}
	return ex, record(ctx, st, Event{Event: "confirm", PlanID: p.ID, Cluster: p.Cluster, EtcdUser: opts.EtcdUser, Range: p.Range,
		Keys: deleted, Result: fmt.Sprintf("deleted %d keys at revision %d; saved to %s", deleted, ex.Revision, saved)})
}

// Keys go back in transactions of at most undoBatch keys (etcd allows 128 operations) and
// about undoBatchBytes (etcd refuses requests over 1.5 MiB by default); a single larger
// value goes alone.
const (
	undoBatch      = 100
	undoBatchBytes = 1 << 20
)

// UndoResult is what an undo put back.
type UndoResult struct {
	PlanID    string   `json:"plan_id"`
	Restored  int64    `json:"restored"`
	Conflicts []string `json:"conflicts"` // keys that exist now and were left alone
}

// Undo puts an executed plan's saved keys back, never overwriting a key that exists now.
// Keys come back without their lease: the lease they had may be gone.
func Undo(ctx context.Context, cli *clientv3.Client, st store.Store, cluster, id, etcdUser string) (*UndoResult, error) {
	p, err := LoadPlan(ctx, st, cluster, id)
	if err != nil {
		return nil, err
	}
	if state, err := planState(ctx, st, p); err != nil {
		return nil, err
	} else if state != "executed" {
		return nil, fmt.Errorf("%w: plan %s is %s, not executed: there is nothing to undo", ErrRefused, id, state)
	}
	res := &UndoResult{PlanID: id, Conflicts: []string{}}
	var batch []entry
	var batchBytes int
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		defer func() { batch, batchBytes = batch[:0], 0 }()
		// One transaction for the whole batch when none of its keys exists now (the usual
		// case); key by key otherwise, to find the conflicts.
		cmps, puts := make([]clientv3.Cmp, len(batch)), make([]clientv3.Op, len(batch))
		for i, e := range batch {
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(string(e.Key)), "=", 0)
			puts[i] = clientv3.OpPut(string(e.Key), string(e.Value))
		}
		resp, err := cli.Txn(ctx).If(cmps...).Then(puts...).Commit()
		if err != nil {
			return fmt.Errorf("putting back %d keys from %q: %w", len(batch), batch[0].Key, err)
		}
		if resp.Succeeded {
			res.Restored += int64(len(batch))
			return nil
		}
		for i, e := range batch {
			resp, err := cli.Txn(ctx).If(cmps[i]).Then(puts[i]).Commit()
			if err != nil {
				return fmt.Errorf("putting back %q: %w", e.Key, err)
			}
			if resp.Succeeded {
				res.Restored++
			} else {
				res.Conflicts = append(res.Conflicts, string(e.Key))
			}
		}
		return nil
	}
	err = readEntries(ctx, st, deletedKey(cluster, id), func(e entry) error {
		size := len(e.Key) + len(e.Value)
		if len(batch) == undoBatch || batchBytes+size > undoBatchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, e)
		batchBytes += size
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return res, fmt.Errorf("undo of plan %s stopped after %d keys: %w; running undo again is safe", id, res.Restored, err)
	}
	if err := markState(ctx, st, p, "undone", res); err != nil {
		return res, err
	}
	return res, record(ctx, st, Event{Event: "undo", PlanID: id, Cluster: cluster, EtcdUser: etcdUser, Range: p.Range, Keys: res.Restored,
		Result: fmt.Sprintf("restored %d keys, %d conflicts left alone", res.Restored, len(res.Conflicts))})
}

// PlanInfo is a plan and its state, for `guard plans`.
type PlanInfo struct {
	*Plan
	State string `json:"state"` // planned, executed, undone, expired
}

// Plans lists the cluster's plans, newest first.
func Plans(ctx context.Context, st store.Store, cluster string) ([]PlanInfo, error) {
	objs, err := st.List(ctx, plansPrefix(cluster))
	if err != nil {
		return nil, err
	}
	var out []PlanInfo
	for i := len(objs) - 1; i >= 0; i-- {
		rest := objs[i].Key[len(plansPrefix(cluster)):]
		id, ok := strings.CutSuffix(rest, ".json")
		if !ok || strings.Contains(id, ".") { // state records and key lists are not plans
			continue
		}
		p, err := LoadPlan(ctx, st, cluster, id)
		if err != nil {
			return nil, err
		}
		state, err := planState(ctx, st, p)
		if err != nil {
			return nil, err
		}
		out = append(out, PlanInfo{Plan: p, State: state})
	}
	return out, nil
}

func planState(ctx context.Context, st store.Store, p *Plan) (string, error) {
	for _, s := range []string{"undone", "executed"} {
		_, err := st.Stat(ctx, stateKey(p.Cluster, p.ID, s))
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, store.ErrNotExist) {
			return "", err
		}
	}
	// The saved keys exist only once a delete ran (a refused one removes them), so they
	// also mark a plan executed whose state record could not be written.
	if _, err := st.Stat(ctx, deletedKey(p.Cluster, p.ID)); err == nil {
		return "executed", nil
	} else if !errors.Is(err, store.ErrNotExist) {
		return "", err
	}
	if time.Now().After(p.ExpiresAt) {
		return "expired", nil
	}
	return "planned", nil
}

func markState(ctx context.Context, st store.Store, p *Plan, state string, v any) error {
	b, err := jsonBytes(v)
	if err != nil {
		return err
	}
	return store.PutBytes(ctx, st, stateKey(p.Cluster, p.ID, state), b)
}
