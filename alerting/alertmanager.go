package alerting

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// Alertmanager's client contract, as Prometheus keeps it (rules/alerting.go, sendAlerts and
// needsSending; rules/manager.go, SendAlerts): a firing alert is re-sent every resend delay
// (--rules.alert.resend-delay, 1m) with endsAt = now + 4 × max(evaluation interval, resend
// delay), so Alertmanager keeps it active exactly as long as the client keeps sending and
// expires it by itself a few intervals after the client is gone; a cleared alert is sent with
// endsAt = when it cleared, and sent again for 15 minutes in case a post was lost. An alert
// without endsAt is resolved by Alertmanager resolve_timeout (5m) after it last heard of it,
// which is why re-sending it every --alert-repeat (1h) paged RESOLVED while backups failed.
// Here the resends come from a loop of their own, which re-sends the last evaluation's
// alerts whatever --check-interval is, so endsAt is 4 resends ahead.
const (
	// DefaultResend is how often firing alerts go to Alertmanager again (Prometheus's
	// --rules.alert.resend-delay).
	DefaultResend = time.Minute
	// MinResend and MaxResend bound --alert-alertmanager-resend: Alertmanager expects a
	// client to re-send every 30 s to 3 min; below a second only tests have a use for it.
	MinResend = time.Second
	MaxResend = 3 * time.Minute
	// expiryResends is how many resends a firing alert's endsAt lies ahead: one lost post
	// (or a leader handing over) does not resolve it, a dead daemon does within minutes.
	expiryResends = 4
	// resolvedRetention is how long a resolved alert is sent again at every resend.
	resolvedRetention = 15 * time.Minute
	// maxPostTimeout caps one post to one Alertmanager.
	maxPostTimeout = 10 * time.Second
)

// Alertmanager posts to Alertmanager's v2 API; it deduplicates, groups and routes itself.
// Given to an Alerter among its Notifiers, it is kept current on the Alerter's own loop
// (see Alerter.Run) instead of being reminded every Repeat.
type Alertmanager struct{ URL string } // base URL, e.g. http://10.0.0.5:9093

type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
}

// amLabels are an alert's identity in Alertmanager: the same labels at every resend, so it
// deduplicates them into one alert; the summary, which changes (an age), is an annotation.
func amLabels(a Alert) map[string]string {
	return map[string]string{"alertname": a.Name, "cluster": a.Cluster, "severity": a.Severity, "source": "etcdguard"}
}

// amKey is the part of amLabels that varies between alerts of one Alerter.
func amKey(a Alert) string { return a.Name + "\x00" + a.Cluster + "\x00" + a.Severity }

// push posts alerts: firing ones with endsAt = validUntil, resolved ones with their EndsAt.
func (am Alertmanager) push(ctx context.Context, alerts []Alert, validUntil time.Time) error {
	out := make([]amAlert, len(alerts))
	for i, a := range alerts {
		ann := map[string]string{"summary": a.Summary}
		if a.Description != "" {
			ann["description"] = a.Description
		}
		if a.RunbookURL != "" {
			ann["runbook_url"] = a.RunbookURL
		}
		out[i] = amAlert{Labels: amLabels(a), Annotations: ann, StartsAt: a.StartsAt, EndsAt: validUntil}
		if a.Resolved() {
			out[i].EndsAt = a.EndsAt
		}
	}
	return post(ctx, httpClient, strings.TrimSuffix(am.URL, "/")+"/api/v2/alerts", out)
}

// Notify posts alerts once, firing ones valid for expiryResends × DefaultResend. An Alerter
// does not call it: it re-sends through its own loop.
func (am Alertmanager) Notify(ctx context.Context, alerts []Alert) error {
	return am.push(ctx, alerts, time.Now().Add(expiryResends*DefaultResend))
}

func (am Alertmanager) String() string { return "alertmanager " + redactURL(am.URL) }

// amPusher keeps the Alertmanagers' view of this daemon's alerts current. It posts on its
// own goroutine, each post bounded by a timeout, so a slow or unreachable Alertmanager never
// holds up the daemon's evaluations or its other notifiers.
type amPusher struct {
	targets []Alertmanager
	resend  time.Duration
	wake    chan struct{} // a change to send before the next resend

	mu       sync.Mutex
	send     bool             // this daemon is the one that notifies
	firing   map[string]Alert // by name; StartsAt is when the condition began
	resolved map[string]Alert // by amKey; EndsAt is when it cleared
}

func newAMPusher(targets []Alertmanager, resend time.Duration) *amPusher {
	if resend <= 0 {
		resend = DefaultResend
	}
	return &amPusher{targets: targets, resend: resend, wake: make(chan struct{}, 1),
		firing: map[string]Alert{}, resolved: map[string]Alert{}}
}

// set records the alerts firing at now (StartsAt already fixed by the Alerter). A change
// (new alert, new severity, cleared, or this daemon becoming the sender) is pushed at once;
// the rest waits for the next resend.
func (p *amPusher) set(active []Alert, now time.Time, send bool) {
	p.mu.Lock()
	changed := send && !p.send
	p.send = send
	next := make(map[string]Alert, len(active))
	for _, a := range active {
		next[a.Name] = a
		old, ok := p.firing[a.Name]
		if !ok || amKey(old) != amKey(a) {
			changed = true
			if ok && send {
				// The severity changed: its labels are another alert, so the old one is
				// resolved rather than left to expire.
				old.EndsAt = now
				p.resolved[amKey(old)] = old
			}
		}
		delete(p.resolved, amKey(a))
	}
	for name, old := range p.firing {
		if _, ok := next[name]; ok {
			continue
		}
		changed = true
		if send { // a follower never resolves what the leader sends
			old.EndsAt = now
			p.resolved[amKey(old)] = old
		}
	}
	p.firing = next
	p.mu.Unlock()
	if changed {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// run pushes every resend interval and at every change until ctx ends. It resolves
// nothing on the way out: the condition may still hold, and Alertmanager expires the alert
// by its endsAt unless another daemon takes over sending it.
func (p *amPusher) run(ctx context.Context) {
	t := time.NewTicker(p.resend)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
		p.pushOnce(ctx, time.Now())
	}
}

// pushOnce posts the firing alerts and the recently resolved ones to every Alertmanager
// at the same time (an HA pair must each have them), and waits at most one timeout.
func (p *amPusher) pushOnce(ctx context.Context, now time.Time) {
	p.mu.Lock()
	var out []Alert
	if p.send {
		for _, a := range p.firing {
			out = append(out, a)
		}
	}
	for k, r := range p.resolved {
		if now.Sub(r.EndsAt) > resolvedRetention {
			delete(p.resolved, k)
		} else if p.send {
			out = append(out, r)
		}
	}
	p.mu.Unlock()
	if len(out) == 0 {
		return
	}
	sort.Slice(out, func(i, j int) bool { return amKey(out[i]) < amKey(out[j]) })
	validUntil := now.Add(expiryResends * p.resend)
	timeout := min(p.resend, maxPostTimeout)
	var wg sync.WaitGroup
	for _, am := range p.targets {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := am.push(pctx, out, validUntil); err != nil && ctx.Err() == nil {
				slog.WarnContext(ctx, "alert delivery failed; re-sending at the next interval", "notifier", am.String(), "resend", p.resend, "err", err)
			}
		})
	}
	wg.Wait()
}
