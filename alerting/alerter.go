package alerting

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Alerter turns the conditions seen at each evaluation into notifications. Chat receivers
// (webhook, Slack) get a new alert at once, a reminder every Repeat while it fires, and a
// resolve when it clears; a delivery that fails is retried at the next evaluation.
// Alertmanagers among the Notifiers are kept current instead, by Run: every firing alert
// again every Resend with an endsAt a few Resends ahead, and a resolve when it clears, so
// Alertmanager neither resolves a standing problem nor depends on Repeat; its own
// repeat_interval decides how often people are reminded.
type Alerter struct {
	Notifiers []Notifier
	Repeat    time.Duration
	Resend    time.Duration // Alertmanager's resend interval; DefaultResend if zero

	once sync.Once
	chat []Notifier
	am   *amPusher // nil without Alertmanagers

	mu sync.Mutex
	// by name and severity: EtcdSnapshotTooOld going from warning to critical resolves
	// the warning and fires the critical one, as Alertmanager tells them apart too.
	firing map[string]*firing
}

func (a *Alerter) init() {
	a.once.Do(func() {
		var ams []Alertmanager
		for _, n := range a.Notifiers {
			switch am := n.(type) {
			case Alertmanager:
				ams = append(ams, am)
			case *Alertmanager:
				ams = append(ams, *am)
			default:
				a.chat = append(a.chat, n)
			}
		}
		if len(ams) > 0 {
			a.am = newAMPusher(ams, a.Resend)
		}
	})
}

// Run sends to the Alertmanagers until ctx ends; without it they get nothing.
func (a *Alerter) Run(ctx context.Context) {
	a.init()
	if a.am != nil {
		a.am.run(ctx)
	}
}

type firing struct {
	alert    Alert
	lastSent time.Time // zero: never delivered
}

// Update records which alerts are active now. send says whether this process is the one
// that notifies (the leader, or anyone when there is none); others keep the state, so they
// can take over at once.
func (a *Alerter) Update(ctx context.Context, active []Alert, now time.Time, send bool) error {
	a.init()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.firing == nil {
		a.firing = map[string]*firing{}
	}
	var out, current []Alert
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
		current = append(current, f.alert)
		if send && (f.lastSent.IsZero() || now.Sub(f.lastSent) >= a.Repeat) {
			out, sent = append(out, f.alert), append(sent, f)
		}
	}
	if a.am != nil {
		a.am.set(current, now, send) // before the chat posts, which may take a while
	}
	var resolved []string
	for name, f := range a.firing {
		if seen[name] {
			continue
		}
		if f.lastSent.IsZero() {
			delete(a.firing, name) // nobody was told it fired
			continue
		}
		// Resolved by whoever paged it, notifying now or not: the daemon that leads now may
		// never have had it (a follower's stale failure count, a capture that stopped).
		r := f.alert
		r.EndsAt = now
		out = append(out, r)
		resolved = append(resolved, name)
	}
	if len(out) == 0 || len(a.chat) == 0 {
		for _, name := range resolved {
			delete(a.firing, name)
		}
		return nil
	}
	var errs []error
	for _, n := range a.chat {
		if err := n.Notify(ctx, out); err != nil {
			errs = append(errs, err)
			slog.WarnContext(ctx, "alert delivery failed; retrying at the next evaluation", "notifier", n.String(), "err", err)
		}
	}
	if len(errs) == len(a.chat) {
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
