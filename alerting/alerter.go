package alerting

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Alerter turns the conditions seen at each evaluation into notifications: a new alert at
// once, a reminder every Repeat while it fires, and a resolve when it clears. A delivery
// that fails is retried at the next evaluation.
type Alerter struct {
	Notifiers []Notifier
	Repeat    time.Duration

	mu sync.Mutex
	// by name and severity: EtcdSnapshotTooOld going from warning to critical resolves
	// the warning and fires the critical one, as Alertmanager tells them apart too.
	firing map[string]*firing
}

type firing struct {
	alert    Alert
	lastSent time.Time // zero: never delivered
}

// Update records which alerts are active now. send says whether this process is the one
// that notifies (the leader, or anyone when there is none); others keep the state, so they
// can take over at once.
func (a *Alerter) Update(ctx context.Context, active []Alert, now time.Time, send bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.firing == nil {
		a.firing = map[string]*firing{}
	}
	var out []Alert
	var sent []*firing
	seen := map[string]bool{}
	for _, al := range active {
		key := al.Name + "/" + al.Severity
		seen[key] = true
		f, ok := a.firing[key]
		if !ok {
			al.StartsAt = now
			f = &firing{alert: al}
			a.firing[key] = f
		} else {
			start := f.alert.StartsAt
			f.alert = al
			f.alert.StartsAt = start
		}
		if send && (f.lastSent.IsZero() || now.Sub(f.lastSent) >= a.Repeat) {
			out, sent = append(out, f.alert), append(sent, f)
		}
	}
	var resolved []string
	for name, f := range a.firing {
		if seen[name] {
			continue
		}
		if f.lastSent.IsZero() || !send {
			delete(a.firing, name) // nobody was told it fired, or another daemon notifies
			continue
		}
		r := f.alert
		r.EndsAt = now
		out = append(out, r)
		resolved = append(resolved, name)
	}
	if len(out) == 0 || len(a.Notifiers) == 0 {
		for _, name := range resolved {
			delete(a.firing, name)
		}
		return nil
	}
	var errs []error
	for _, n := range a.Notifiers {
		if err := n.Notify(ctx, out); err != nil {
			errs = append(errs, err)
			slog.WarnContext(ctx, "alert delivery failed; retrying at the next evaluation", "notifier", n.String(), "err", err)
		}
	}
	if len(errs) == len(a.Notifiers) {
		return errors.Join(errs...) // nothing got through: keep everything for the retry
	}
	for _, f := range sent {
		f.lastSent = now
	}
	for _, name := range resolved {
		delete(a.firing, name)
	}
	return nil
}
