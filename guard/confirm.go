package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
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
	// DeletedByOthers counts the planned keys someone else deleted between the confirm's
	// read and its delete: they are not in the saved copy, so undo does not recreate them.
	DeletedByOthers int64 `json:"deleted_by_others"`
	// Recipients are the age public keys the saved copy is encrypted to (none: in the clear).
	Recipients []string `json:"recipients,omitempty"`
	Attempt    string   `json:"attempt,omitempty"` // the confirm whose delete it was (markerKey)
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
		// Recorded under the plan asked for, where it was found: the stored plan's own id and
		// cluster may be what is wrong with it.
		if err := record(ctx, st, Event{Event: "refuse", PlanID: id, Cluster: opts.Cluster, EtcdUser: opts.EtcdUser, Range: p.Range, Keys: p.KeyCount, Result: msg}); err != nil {
			return err
		}
		return fmt.Errorf("%w: plan %s: %s", ErrRefused, p.ID, msg)
	}
	if err := p.Validate(id); err != nil {
		return nil, refuse("%v; make a new plan with --dry-run", err)
	}
	if p.Cluster != opts.Cluster { // before its state is read, under its cluster's prefix
		return nil, refuse("it belongs to cluster %s, not %s", p.Cluster, opts.Cluster)
	}
	state, err := planState(ctx, st, p)
	if err != nil {
		return nil, err
	}
	if state == "interrupted" {
		switch ex, err := settle(ctx, cli, st, p, opts.EtcdUser); {
		case errors.Is(err, errCannotTell):
			return nil, refuse("%v: make a new plan with --dry-run, or if the keys are gone because of it, `etcdguard guard undo %s --assume-executed` puts them back", err, p.ID)
		case err != nil:
			return nil, err
		case ex != nil:
			return nil, refuse("it is executed: another confirm of it deleted %d keys at revision %d (one running now, or one interrupted before recording it); "+
				"the keys are saved in %s (`etcdguard guard undo %s` puts them back)", ex.Deleted, ex.Revision, ex.SavedTo, p.ID)
		case time.Now().After(p.ExpiresAt):
			state = "expired"
		default:
			state = "planned" // an earlier confirm saved the keys but deleted nothing
		}
	}
	switch {
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
	// saving every key, value and lease TTL.
	// A one-off delete checks the cluster's encryption, never decides it.
	if err := crypt.CheckWrite(ctx, st, p.Cluster, "", false); errors.Is(err, crypt.ErrPolicy) {
		return nil, refuse("%v; nothing was deleted", err)
	} else if err != nil {
		return nil, fmt.Errorf("%w; nothing was deleted", err)
	}
	if err := holdsRecords(p.Range, p.Cluster); err != nil {
		return nil, refuse("%v; nothing was deleted", err)
	}
	// The marker says pending before anything is saved; this confirm's delete runs only
	// if no other confirm, and no settling of one, changed it since.
	mk := markerKey(p.Cluster, p.ID)
	was, err := readMarker(ctx, cli, mk)
	if err != nil {
		return nil, fmt.Errorf("%w; nothing was deleted", err)
	}
	if isAttempt(was.value) {
		// A confirm that started after this one read the plan's state executed it.
		if copies, err := savedCopies(ctx, st, p.Cluster, p.ID); err == nil && copies[was.value] != "" {
			return nil, refuse(executedByOther)
		}
		return nil, refuse("etcd's record key %s says confirm %s deleted its keys at revision %d, but the store holds neither its saved copy nor a record of it: "+
			"look for them under %s before anything else; nothing was deleted", mk, was.value, was.mod, deletedPrefix(p.Cluster, p.ID))
	}
	claim, err := putMarkerIf(ctx, cli, mk, was.mod, markerPending)
	if err != nil {
		return nil, fmt.Errorf("writing etcdguard's record key %s: %w; nothing was deleted: the plan can be confirmed again", mk, err)
	}
	if !claim.Succeeded {
		if executedMeanwhile(ctx, cli, mk) {
			return nil, refuse(executedByOther)
		}
		return nil, refuse("another confirm or undo of it is running (its record key %s changed); nothing was deleted: confirm again once it ended", mk)
	}
	marker := marker{value: markerPending, mod: claim.Header.Revision}
	attempt := newAttempt()
	saved := savedKey(st, p.Cluster, p.ID, attempt)
	sw, err := newEntryWriter(ctx, st, saved)
	if err != nil {
		return nil, err
	}
	nextPlanned, stopReading := streamEntries(ctx, st, planKeysKey(p.Cluster, p.ID))
	errChanged := errors.New("changed")
	ttls := map[int64]int64{}
	var n int64
	var first, last []byte
	beforeScan(ctx)
	rev, err := scanRange(ctx, cli, p.Range, 0, opts.PageSize, false, func(k []byte, mod int64, val []byte, lease int64) error {
		want, ok := nextPlanned()
		if !ok || !bytes.Equal(want.Key, k) || want.Mod != mod {
			return errChanged
		}
		if n == 0 {
			first = k
		}
		last = k
		n++
		ttl, err := leaseTTL(ctx, cli, ttls, lease)
		if err != nil {
			return err
		}
		return sw.write(entry{Key: k, Mod: mod, Value: val, Lease: lease, TTL: ttl})
	})
	if err == nil {
		if _, more := nextPlanned(); more {
			err = errChanged // a planned key is gone
		}
	}
	if rerr := stopReading(); err == nil && rerr != nil {
		err = fmt.Errorf("reading plan %s's keys: %w", p.ID, rerr)
	}
	// The key list is what is compared with etcd; the plan's summary is what the operator
	// read and confirms (del asks for its key count): they must be the same keys.
	if err == nil && (n != p.KeyCount || !sameKey(p.FirstKey, first) || !sameKey(p.LastKey, last)) {
		sw.Abort(errChanged)
		return nil, refuse("the stored plan is damaged or edited: it says %d keys from %q to %q, its key list holds %d from %q to %q; make a new plan with --dry-run",
			p.KeyCount, p.FirstKey, p.LastKey, n, first, last)
	}
	if err != nil {
		sw.Abort(err)
		if errors.Is(err, errChanged) {
			// Another confirm of this plan deleting its keys changes the range too, and
			// writes its attempt to the marker in the same transaction.
			if m, merr := readMarker(ctx, cli, mk); merr == nil && m.mod != marker.mod && isAttempt(m.value) {
				return nil, refuse(executedByOther)
			}
			return nil, refuse("the range changed since the plan; run --dry-run again (planned at revision %d, now at %d)", p.Revision, rev)
		}
		return nil, fmt.Errorf("%w; nothing was deleted: confirm again", err)
	}
	if err := sw.Close(); err != nil {
		return nil, fmt.Errorf("saving the keys to delete to %s: %w; nothing was deleted", saved, err)
	}

	// One transaction: if no key in the range was written after R and the marker is as
	// read, delete the range and write this attempt's id to the marker. The compare cannot
	// see a key deleted after R (it compares the keys that exist), so the delete's count
	// tells whether the saved copy holds keys someone else deleted.
	beforeDelete(ctx)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(p.Range.Start), "<", rev+1).WithRange(p.Range.End),
			clientv3.Compare(clientv3.ModRevision(mk), "=", marker.mod)).
		Then(clientv3.OpDelete(p.Range.Start, clientv3.WithRange(p.Range.End)), clientv3.OpPut(mk, attempt)).
		Commit()
	if etcdclient.PermissionDenied(err) {
		// Refused before it was applied, the whole transaction: nothing was deleted.
		dropCopy(context.WithoutCancel(ctx), st, saved)
		return nil, fmt.Errorf("deleting %s and recording it in %s: %w; etcd deleted nothing: the plan can be confirmed again", p.Range, mk, err)
	}
	if err != nil {
		return nil, interrupted(ctx, cli, st, p, attempt, opts.EtcdUser, fmt.Errorf("deleting %s: %w", p.Range, err))
	}
	if !resp.Succeeded {
		return nil, notDeleted(ctx, cli, st, p, saved, marker, refuse)
	}
	ex := &Execution{PlanID: p.ID, Deleted: resp.Responses[0].GetResponseDeleteRange().Deleted, Revision: resp.Header.Revision, SavedTo: saved, Attempt: attempt}
	if strings.HasSuffix(saved, store.EncryptedExt) {
		ex.Recipients = store.EncryptTo(st)
	}
	afterDelete(ctx)
	if ex.Deleted != n {
		if ex.DeletedByOthers, err = reconcile(ctx, cli, st, p, saved, ex.Revision-1); err != nil {
			return nil, interrupted(ctx, cli, st, p, attempt, opts.EtcdUser, err)
		}
	}
	return ex, recordExecuted(ctx, st, p, ex, opts.EtcdUser, "")
}

// marker is the marker key as read: its value and mod revision (0: absent).
type marker struct {
	value string
	mod   int64
}

func readMarker(ctx context.Context, cli *clientv3.Client, key string) (marker, error) {
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return marker{}, fmt.Errorf("reading etcdguard's record key %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return marker{}, nil
	}
	return marker{value: string(resp.Kvs[0].Value), mod: resp.Kvs[0].ModRevision}, nil
}

// putMarkerIf sets the marker to value if its mod revision is still mod (0: absent).
func putMarkerIf(ctx context.Context, cli *clientv3.Client, key string, mod int64, value string) (*clientv3.TxnResponse, error) {
	return cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", mod)).Then(clientv3.OpPut(key, value)).Commit()
}

// dropCopy removes the saved copy of a confirm whose delete did not and cannot happen;
// one that stays is harmless (the marker says no delete ran), so a failure is logged.
func dropCopy(ctx context.Context, st store.Store, saved string) {
	if err := st.Delete(ctx, saved); err != nil {
		slog.WarnContext(ctx, "could not remove the saved keys of a delete that did not happen", "object", saved, "err", err)
	}
}

// holdsRecords refuses a range that holds keys under RecordPrefix, the confirms' records.
func holdsRecords(r Range, cluster string) error {
	if pre := RecordPrefix(cluster); r.Overlaps(pre, clientv3.GetPrefixRangeEnd(pre)) {
		return fmt.Errorf("the range %s holds %s, where each confirm records its delete: leave it out (plan the range in two parts around it)", r, pre)
	}
	return nil
}

// notDeleted is a confirm's answer when its delete's compare failed: etcd deleted
// nothing for it, so its own saved copy goes. The marker tells why: another confirm's
// delete ran, a settling cancelled this one, or a key in the range was written.
func notDeleted(ctx context.Context, cli *clientv3.Client, st store.Store, p *Plan, saved string, was marker, refuse func(string, ...any) error) error {
	dropCopy(context.WithoutCancel(ctx), st, saved)
	mk := markerKey(p.Cluster, p.ID)
	now, err := readMarker(ctx, cli, mk)
	switch {
	case err != nil:
		return fmt.Errorf("%w; this confirm deleted nothing: `etcdguard guard plans` shows the plan's state", err)
	case now.mod != was.mod && (isAttempt(now.value) || executedMeanwhile(ctx, cli, mk)):
		return refuse(executedByOther)
	case now.mod != was.mod:
		return refuse("another confirm or undo of it ran meanwhile (its record key %s changed); nothing was deleted: confirm again once it ended", mk)
	}
	return refuse("a key in the range was written while confirming; nothing was deleted; run --dry-run again")
}

// executedMeanwhile waits a little for another confirm of the plan, which claimed the
// marker first, to delete: the answer to a confirm of a plan that is being executed.
func executedMeanwhile(ctx context.Context, cli *clientv3.Client, mk string) bool {
	for deadline := time.Now().Add(executedWait); ; time.Sleep(100 * time.Millisecond) {
		m, err := readMarker(ctx, cli, mk)
		switch {
		case err != nil || m.value == markerCancelled:
			return false
		case isAttempt(m.value):
			return true
		case time.Now().After(deadline) || ctx.Err() != nil:
			return false
		}
	}
}

// executedWait is how long a confirm that lost the race waits for the winner's delete.
var executedWait = 10 * time.Second

// executedByOther is the refusal of a confirm that lost the race to another of its plan.
const executedByOther = "it is executed: another confirm of it deleted its keys while this one was confirming; this one deleted nothing"

// sameKey reports whether the key a plan names is k, as far as JSON kept it: a key that is
// not UTF-8 comes back from it with U+FFFD in place of its other bytes.
func sameKey(named string, k []byte) bool {
	if utf8.Valid(k) {
		return named == string(k)
	}
	b, _ := json.Marshal(string(k))
	var kept string
	_ = json.Unmarshal(b, &kept)
	return named == kept
}

// Tests interrupt a confirm here: before it reads the range, after the keys are saved, and
// after etcd deleted them.
var beforeScan, beforeDelete, afterDelete = func(context.Context) {}, func(context.Context) {}, func(context.Context) {}

// recordExecuted marks the plan executed and audits it.
func recordExecuted(ctx context.Context, st store.Store, p *Plan, ex *Execution, etcdUser, note string) error {
	// Two confirms of one plan at once: the one that lost may find the winner's delete
	// before the winner recorded it, and settle it as interrupted. Whichever records
	// first, the delete is recorded and audited once.
	if _, err := st.Stat(ctx, stateKey(p.Cluster, p.ID, "executed")); err == nil {
		slog.InfoContext(ctx, "the plan's execution is recorded already, by another confirm of it", "plan", p.ID)
		return nil
	}
	if err := markState(ctx, st, p, "executed", ex); err != nil {
		return fmt.Errorf("deleted %d keys, saved in %s (`etcdguard guard undo %s` puts them back), but recording the plan as executed failed: %w",
			ex.Deleted, ex.SavedTo, p.ID, err)
	}
	return record(ctx, st, Event{Event: "confirm", PlanID: p.ID, Cluster: p.Cluster, EtcdUser: etcdUser, Range: p.Range, Keys: ex.Deleted,
		Result: fmt.Sprintf("deleted %d keys at revision %d (%d planned keys were deleted by others meanwhile and are not saved); saved to %s%s",
			ex.Deleted, ex.Revision, ex.DeletedByOthers, ex.SavedTo, note)})
}

// leaseTTL is the granted TTL of lease (0 for none), asked of etcd once per lease.
func leaseTTL(ctx context.Context, cli *clientv3.Client, known map[int64]int64, lease int64) (int64, error) {
	if lease == 0 {
		return 0, nil
	}
	if ttl, ok := known[lease]; ok {
		return ttl, nil
	}
	resp, err := cli.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil {
		return 0, fmt.Errorf("reading lease %x: %w", lease, err)
	}
	known[lease] = max(resp.GrantedTTL, 1) // a lease gone meanwhile was about to expire its keys
	return known[lease], nil
}

// interrupted tells what a confirm that failed after saving the keys left behind, asking
// etcd whether its delete happened: the request may have reached it before the failure.
func interrupted(ctx context.Context, cli *clientv3.Client, st store.Store, p *Plan, attempt, etcdUser string, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	saved := savedKey(st, p.Cluster, p.ID, attempt)
	switch ex, err := settle(ctx, cli, st, p, etcdUser); {
	case err != nil:
		return fmt.Errorf("%w; whether etcd deleted the range is not known (%v): the keys are saved in %s; run `etcdguard del --confirm %s` again, which asks etcd and finishes or deletes",
			cause, err, saved, p.ID)
	case ex == nil:
		return fmt.Errorf("%w; etcd deleted nothing: the plan can be confirmed again", cause)
	case ex.Attempt != attempt:
		return fmt.Errorf("%w; this confirm deleted nothing, another confirm of plan %s deleted %d keys at revision %d: they are saved in %s (`etcdguard guard undo %s` puts them back)",
			cause, p.ID, ex.Deleted, ex.Revision, ex.SavedTo, p.ID)
	default:
		return fmt.Errorf("%w; etcd deleted %d keys at revision %d: the plan is executed, its keys are saved in %s (`etcdguard guard undo %s` puts them back)",
			cause, ex.Deleted, ex.Revision, saved, p.ID)
	}
}

// errCannotTell: whether an interrupted confirm deleted a plan's keys cannot be told.
var errCannotTell = errors.New("cannot be told")

// settle decides, from etcd's marker key, what happened to a plan whose keys a confirm
// saved but whose execution is not recorded. A marker holding the attempt of a saved copy
// is that confirm's delete, at the marker's revision: the copy is made to hold exactly the
// keys deleted then, the plan recorded executed, and the other copies (of confirms that
// can no longer delete) removed. Otherwise no confirm's delete ran: the marker is set to
// "cancelled", so none still on its way can run it (each compares the marker as it read
// it), and every copy goes. An owner's delete of the keys is never taken for the plan's.
// It returns nil when nothing was deleted for the plan.
func settle(ctx context.Context, cli *clientv3.Client, st store.Store, p *Plan, etcdUser string) (*Execution, error) {
	copies, err := savedCopies(ctx, st, p.Cluster, p.ID)
	if err != nil {
		return nil, err
	}
	if legacy, ok := copies[""]; ok {
		return nil, fmt.Errorf("%w: a confirm by an older etcdguard, which wrote no record key to etcd, saved plan %s's keys to %s and was interrupted: whether it deleted them %w",
			ErrRefused, p.ID, legacy, errCannotTell)
	}
	mk := markerKey(p.Cluster, p.ID)
	for range 5 {
		m, err := readMarker(ctx, cli, mk)
		if err != nil {
			return nil, err
		}
		switch {
		case isAttempt(m.value): // never fenced over
			if _, ok := copies[m.value]; !ok { // saved after the listing, maybe
				if copies, err = savedCopies(ctx, st, p.Cluster, p.ID); err != nil {
					return nil, err
				}
			}
			if saved, ok := copies[m.value]; ok {
				return executedBy(ctx, cli, st, p, m, saved, copies, etcdUser)
			}
			return nil, fmt.Errorf("etcd's record key %s says confirm %s deleted plan %s's keys at revision %d, but its saved copy is not in the store: "+
				"look for it under %s before anything else", mk, m.value, p.ID, m.mod, deletedPrefix(p.Cluster, p.ID))
		case m.mod == 0:
			// Every confirm writes the marker before it saves: with copies saved and none,
			// someone deleted it. A planned key still there as planned proves the plan's
			// delete never ran (it deletes the whole range at once); else it cannot be told.
			left, err := inRange(ctx, cli, p.Range, 0, clientv3.WithMaxModRev(p.Revision))
			if err != nil {
				return nil, err
			}
			if !left {
				return nil, fmt.Errorf("%w: etcdguard's record key %s of plan %s was deleted after a confirm saved its keys, and none of them is left as planned: whether that confirm deleted them %w",
					ErrRefused, mk, p.ID, errCannotTell)
			}
		}
		resp, err := putMarkerIf(ctx, cli, mk, m.mod, markerCancelled)
		if err != nil {
			return nil, fmt.Errorf("cancelling plan %s's interrupted confirms (%s): %w", p.ID, mk, err)
		}
		if !resp.Succeeded {
			continue // a confirm's delete, or another settling, changed it meanwhile: look again
		}
		for _, saved := range copies {
			dropCopy(ctx, st, saved) // a copy left is harmless: the marker says no delete ran
		}
		return nil, nil
	}
	return nil, fmt.Errorf("etcdguard's record key %s kept changing: another confirm or undo of plan %s is running; try again once it ended", mk, p.ID)
}

// executedBy records the delete of the confirm attempt m names, whose copy is saved.
func executedBy(ctx context.Context, cli *clientv3.Client, st store.Store, p *Plan, m marker, saved string, copies map[string]string, etcdUser string) (*Execution, error) {
	// No Recipients: the copy's are the confirm's, which this process may not share (a key
	// rotated since, another node's config); undo then learns them from the copy itself.
	ex := &Execution{PlanID: p.ID, Revision: m.mod, SavedTo: saved, Attempt: m.value}
	note := "; found after an interrupted confirm"
	at, err := cli.Get(ctx, p.Range.Start, clientv3.WithRange(p.Range.End), clientv3.WithRev(m.mod-1), clientv3.WithCountOnly())
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		// The keys as they were just before the delete are gone from etcd: any planned key
		// its owner deleted in the moment between the confirm's read and its delete cannot
		// be told apart, so the copy stays whole.
		ex.Deleted = -1
		note += fmt.Sprintf(" (etcd compacted revision %d: how many keys the delete removed, and whether others deleted some saved ones just before it, cannot be told; undo puts back every saved key that is missing)", m.mod-1)
	case err != nil:
		return nil, err
	default:
		ex.Deleted = at.Count
		if ex.DeletedByOthers, err = reconcile(ctx, cli, st, p, saved, m.mod-1); err != nil {
			return nil, err
		}
	}
	for attempt, other := range copies {
		if attempt != m.value { // its confirm compared an older marker: it can never delete
			dropCopy(ctx, st, other)
		}
	}
	return ex, recordExecuted(ctx, st, p, ex, etcdUser, note)
}

// inRange reports whether the range holds a key at rev (0: now) that passes the filter.
func inRange(ctx context.Context, cli *clientv3.Client, r Range, rev int64, filter clientv3.OpOption) (bool, error) {
	resp, err := cli.Get(ctx, r.Start, clientv3.WithRange(r.End), clientv3.WithRev(rev), filter, clientv3.WithKeysOnly(), clientv3.WithLimit(1))
	if err != nil {
		return false, fmt.Errorf("reading %s at revision %d: %w", r, rev, err)
	}
	return len(resp.Kvs) > 0, nil
}

// reconcile makes the saved copy hold exactly the keys in the range at rev, the revision
// before the delete, dropping the saved keys that others deleted between the confirm's
// read and the delete; it returns how many it dropped. The copy is rewritten through a
// temporary object, as a store cannot read and replace one object at once.
func reconcile(ctx context.Context, cli *clientv3.Client, st store.Store, p *Plan, saved string, rev int64) (int64, error) {
	// An encrypted copy is never rewritten, even where it could be read: the rewrite
	// would encrypt it to this process's recipients (maybe none, maybe not the team's
	// recovery key).
	if strings.HasSuffix(saved, store.EncryptedExt) {
		return listDropped(ctx, cli, st, p, rev)
	}
	tmp := saved + ".reconciling"
	var dropped int64
	err := copyEntries(ctx, st, saved, tmp, func(next func() (entry, bool), write func(entry) error) error {
		_, err := scanRange(ctx, cli, p.Range, rev, 0, true, func(k []byte, _ int64, _ []byte, _ int64) error {
			for {
				e, ok := next()
				if !ok {
					return fmt.Errorf("%q was deleted at revision %d but is not in the saved copy %s", k, rev+1, saved)
				}
				if bytes.Equal(e.Key, k) {
					return write(e)
				}
				dropped++
			}
		})
		if err != nil {
			return err
		}
		for _, ok := next(); ok; _, ok = next() {
			dropped++
		}
		return nil
	})
	if err == nil {
		err = copyEntries(ctx, st, tmp, saved, func(next func() (entry, bool), write func(entry) error) error {
			for e, ok := next(); ok; e, ok = next() {
				if err := write(e); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if derr := st.Delete(context.WithoutCancel(ctx), tmp); derr != nil {
		slog.WarnContext(ctx, "could not remove a temporary copy of saved keys", "object", tmp, "err", derr)
	}
	if err != nil {
		return 0, fmt.Errorf("removing from %s the keys others deleted before revision %d: %w", saved, rev+1, err)
	}
	slog.InfoContext(ctx, "saved copy reconciled with the delete", "plan", p.ID, "deleted_by_others", dropped)
	return dropped, nil
}

// listDropped is reconcile for an encrypted saved copy, which is never rewritten (the
// identity stays off the nodes that delete, and a rewrite could change its recipients):
// the saved keys are exactly the plan's (the
// confirm checked them one by one), so those others deleted before rev+1 are the plan's
// keys missing from the range at rev. They are listed in droppedKey for undo to skip.
func listDropped(ctx context.Context, cli *clientv3.Client, st store.Store, p *Plan, rev int64) (int64, error) {
	var dropped int64
	err := copyEntries(ctx, st, planKeysKey(p.Cluster, p.ID), droppedKey(p.Cluster, p.ID), func(next func() (entry, bool), write func(entry) error) error {
		_, err := scanRange(ctx, cli, p.Range, rev, 0, true, func(k []byte, _ int64, _ []byte, _ int64) error {
			for {
				e, ok := next()
				if !ok {
					return fmt.Errorf("%q was deleted at revision %d but is not among plan %s's keys", k, rev+1, p.ID)
				}
				if bytes.Equal(e.Key, k) {
					return nil
				}
				dropped++
				if err := write(entry{Key: e.Key}); err != nil {
					return err
				}
			}
		})
		if err != nil {
			return err
		}
		for e, ok := next(); ok; e, ok = next() {
			dropped++
			if err := write(entry{Key: e.Key}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("listing the keys of plan %s others deleted before revision %d: %w", p.ID, rev+1, err)
	}
	slog.InfoContext(ctx, "keys others deleted before the plan's delete are listed for undo to skip", "plan", p.ID, "deleted_by_others", dropped, "object", droppedKey(p.Cluster, p.ID))
	return dropped, nil
}

// copyEntries writes to the object to what fn writes while reading the object from.
func copyEntries(ctx context.Context, st store.Store, from, to string, fn func(next func() (entry, bool), write func(entry) error) error) error {
	w, err := newEntryWriter(ctx, st, to)
	if err != nil {
		return err
	}
	next, stop := streamEntries(ctx, st, from)
	err = fn(next, w.write)
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		w.Abort(err)
		return err
	}
	return w.Close()
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

// UndoOptions configures Undo.
type UndoOptions struct {
	EtcdUser string // for the audit record
	// AssumeExecuted puts back the saved keys that are missing even when etcd can no longer
	// tell whether an interrupted confirm deleted them (it compacted those revisions): a
	// key missing now may then have been deleted by its owner, not by the plan.
	AssumeExecuted bool
}

// Undo puts an executed plan's saved keys back, never overwriting a key that exists now.
// A key that had a lease gets it back if it still exists, else a new lease with the TTL
// it had, so restored Events and the like still expire.
func Undo(ctx context.Context, cli *clientv3.Client, st store.Store, cluster, id string, opts UndoOptions) (*UndoResult, error) {
	etcdUser := opts.EtcdUser
	p, err := LoadPlan(ctx, st, cluster, id)
	if err != nil {
		return nil, err
	}
	state, err := planState(ctx, st, p)
	if err != nil {
		return nil, err
	}
	var saved string // the copy to put back
	if state == "interrupted" {
		switch ex, err := settle(ctx, cli, st, p, etcdUser); {
		case errors.Is(err, errCannotTell) && opts.AssumeExecuted:
			slog.WarnContext(ctx, "whether the interrupted confirm deleted the range cannot be told; putting back the saved keys that are missing, as --assume-executed asks",
				"plan", id, "err", err)
			copies, err := savedCopies(ctx, st, cluster, id)
			if err != nil {
				return nil, err
			}
			if len(copies) != 1 {
				return nil, fmt.Errorf("%w: plan %s has %d saved copies (%v): which one holds what was deleted cannot be told; remove the others first", ErrRefused, id, len(copies), copies)
			}
			for _, c := range copies {
				saved = c
			}
		case errors.Is(err, errCannotTell):
			// Either the confirm deleted them, or it deleted nothing and their owners did
			// since: putting them back would then recreate what a controller removed.
			return nil, fmt.Errorf("%w; check whether they are missing because of the plan (`etcdguard del --dry-run` of its range), then `etcdguard guard undo %s --assume-executed` puts back the missing ones", err, id)
		case err != nil:
			return nil, err
		case ex == nil:
			return nil, fmt.Errorf("%w: plan %s was never executed: a confirm saved its keys and was interrupted before etcd deleted them; there is nothing to undo", ErrRefused, id)
		}
		state = "executed"
	}
	if state != "executed" {
		return nil, fmt.Errorf("%w: plan %s is %s, not executed: there is nothing to undo", ErrRefused, id, state)
	}
	res := &UndoResult{PlanID: id, Conflicts: []string{}}
	leases := map[int64]clientv3.LeaseID{} // saved lease -> the lease to put back with
	leaseFor := func(e entry) ([]clientv3.OpOption, error) {
		if e.Lease == 0 {
			return nil, nil
		}
		id, ok := leases[e.Lease]
		if !ok {
			ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(e.Lease))
			if err != nil {
				return nil, fmt.Errorf("reading lease %x of %q: %w", e.Lease, e.Key, err)
			}
			id = clientv3.LeaseID(e.Lease)
			switch {
			case ttl.TTL > 0:
			case e.TTL <= 0: // saved before TTLs were: all that can be done is what undo did then
				slog.WarnContext(ctx, "a lease is gone and its TTL was not saved; its keys come back without a lease", "lease", fmt.Sprintf("%x", e.Lease), "plan", p.ID)
				id = clientv3.NoLease
			default:
				g, err := cli.Grant(ctx, e.TTL)
				if err != nil {
					return nil, fmt.Errorf("granting a %ds lease for %q, whose lease %x is gone: %w", e.TTL, e.Key, e.Lease, err)
				}
				id = g.ID
			}
			leases[e.Lease] = id
		}
		return []clientv3.OpOption{clientv3.WithLease(id)}, nil
	}
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
			lease, err := leaseFor(e)
			if err != nil {
				return err
			}
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(string(e.Key)), "=", 0)
			puts[i] = clientv3.OpPut(string(e.Key), string(e.Value), lease...)
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
	if saved == "" {
		var ex Execution
		b, err := store.ReadAll(ctx, st, stateKey(cluster, id, "executed"), 1<<20)
		if err == nil {
			err = json.Unmarshal(b, &ex)
		}
		if err != nil {
			return nil, fmt.Errorf("reading plan %s's record of its delete: %w", id, err)
		}
		saved = ex.SavedTo
		// Name the keys that open it before anything is put back (a confirm records them).
		if len(ex.Recipients) > 0 {
			if err := crypt.CanRead(st, "the saved copy "+saved, ex.Recipients); err != nil {
				return nil, err
			}
		}
	}
	dropped, err := droppedKeys(ctx, st, cluster, id)
	if err != nil {
		return nil, err
	}
	err = readEntries(ctx, st, saved, func(e entry) error {
		if dropped[string(e.Key)] { // others deleted it before the plan did: it stays deleted
			return nil
		}
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
	// planned, executed, undone, expired, or interrupted: a confirm saved the keys and
	// stopped before recording the delete; the next confirm or undo asks etcd which it was.
	State string `json:"state"`
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
	// Saved keys without a record of the delete: the confirm stopped between saving them
	// and recording the delete, which may or may not have happened; settle asks etcd.
	if copies, err := savedCopies(ctx, st, p.Cluster, p.ID); err != nil {
		return "", err
	} else if len(copies) > 0 {
		return "interrupted", nil
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

// droppedKeys reads the keys listDropped listed for plan id (none if it listed none).
func droppedKeys(ctx context.Context, st store.Store, cluster, id string) (map[string]bool, error) {
	out := map[string]bool{}
	err := readEntries(ctx, st, droppedKey(cluster, id), func(e entry) error {
		out[string(e.Key)] = true
		return nil
	})
	if errors.Is(err, store.ErrNotExist) {
		return out, nil
	}
	return out, err
}
