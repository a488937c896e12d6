package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// amPost is one POST /api/v2/alerts as the client sent it.
type amPost struct {
	at     time.Time
	alerts []amAlert
}

// postLog records the alert posts that pass through it.
type postLog struct {
	mu    sync.Mutex
	posts []amPost
}

func (l *postLog) record(r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v2/alerts" {
		return
	}
	b, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(b))
	var alerts []amAlert
	json.Unmarshal(b, &alerts)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.posts = append(l.posts, amPost{at: time.Now(), alerts: alerts})
}

func (l *postLog) since(t time.Time) []amPost {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []amPost
	for _, p := range l.posts {
		if !p.at.Before(t) {
			out = append(out, p)
		}
	}
	return out
}

// Against a real Alertmanager with resolve_timeout 10s: an alert the daemon keeps seeing
// stays active well past resolve_timeout, with the startsAt of when it began, and the
// webhook behind Alertmanager hears of it once; when it clears, Alertmanager resolves it
// at once. An alert posted the old way (once, no endsAt) resolves after resolve_timeout in
// the same Alertmanager, so the test would catch the old client. The evaluations come every
// 5 s, slower than the 2 s resend, as a --check-interval above --alert-alertmanager-resend
// would: Alertmanager's resends come from the Alerter's own loop.
func TestRealAlertmanagerKeepsAlertActiveUntilCleared(t *testing.T) {
	const (
		resolveTimeout = 10 * time.Second
		resend         = 2 * time.Second
		evaluate       = 5 * time.Second
	)
	am := testharness.StartAlertmanager(t, resolveTimeout)
	// The client talks to Alertmanager through a proxy that records what it posts.
	target, _ := url.Parse(am.URL)
	posts := &postLog{}
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.record(r)
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()

	// The control: the old client's alert, posted once without endsAt.
	old := `[{"labels":{"alertname":"OldStyle","cluster":"prod"},"annotations":{},"startsAt":"` + time.Now().UTC().Format(time.RFC3339Nano) + `"}]`
	resp, err := http.Post(am.URL+"/api/v2/alerts", "application/json", strings.NewReader(old))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("posting the control alert: %v %v", err, resp)
	}
	resp.Body.Close()

	chat := &recorder{}
	a := &Alerter{Notifiers: []Notifier{Alertmanager{URL: proxy.URL}, chat}, Repeat: time.Hour, Resend: resend}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	failing := []Alert{{Name: "EtcdSnapshotFailing", Cluster: "prod", Severity: "critical", Summary: "3 snapshot runs in a row failed"}}
	began := time.Now()
	for i := 0; ; i++ {
		failing[0].Summary = fmt.Sprintf("%d snapshot runs in a row failed", 3+i)
		if err := a.Update(ctx, failing, time.Now(), true); err != nil {
			t.Fatal(err)
		}
		if time.Since(began) >= resolveTimeout+4*time.Second {
			break
		}
		time.Sleep(evaluate)
	}
	checked := time.Now()
	alerts := am.Alerts(t)
	got := am.Alert(t, "EtcdSnapshotFailing")
	if got == nil || got.Status.State != "active" {
		t.Fatalf("%s after it began, longer than resolve_timeout %s, Alertmanager lists EtcdSnapshotFailing as %+v, want active", checked.Sub(began).Round(time.Second), resolveTimeout, got)
	}
	want := map[string]string{"alertname": "EtcdSnapshotFailing", "cluster": "prod", "severity": "critical", "source": "etcdguard"}
	if fmt.Sprint(got.Labels) != fmt.Sprint(want) {
		t.Errorf("labels %v, want %v", got.Labels, want)
	}
	if d := got.StartsAt.Sub(began.Truncate(time.Millisecond)); d < 0 || d > time.Second { // Alertmanager keeps milliseconds
		t.Errorf("startsAt %s, want when the condition began, %s", got.StartsAt, began)
	}
	if !got.EndsAt.After(checked) || got.EndsAt.After(checked.Add(expiryResends*resend+time.Second)) {
		t.Errorf("endsAt %s, want within %s after %s", got.EndsAt, expiryResends*resend, checked)
	}
	if c := am.Alert(t, "OldStyle"); c != nil {
		t.Errorf("the control alert without endsAt is still listed (%+v): resolve_timeout did not apply, so the test shows nothing", c)
	}
	if n := len(alerts); n != 1 {
		t.Errorf("Alertmanager lists %d alerts, want 1 (one per label set): %+v", n, alerts)
	}

	// Every resend carried the same labels and startsAt, and an endsAt 4 resends ahead.
	sent := posts.since(began)
	if len(sent) < int(resolveTimeout/resend) {
		t.Errorf("%d posts in %s, want one every %s", len(sent), checked.Sub(began).Round(time.Second), resend)
	}
	for i, p := range sent {
		if len(p.alerts) != 1 {
			t.Fatalf("post %d has %d alerts: %+v", i, len(p.alerts), p.alerts)
		}
		al := p.alerts[0]
		if fmt.Sprint(al.Labels) != fmt.Sprint(want) || !al.StartsAt.Equal(sent[0].alerts[0].StartsAt) {
			t.Errorf("post %d: labels %v startsAt %s; want %v and the first post's %s", i, al.Labels, al.StartsAt, want, sent[0].alerts[0].StartsAt)
		}
		if d := al.EndsAt.Sub(p.at); d < expiryResends*resend-time.Second || d > expiryResends*resend {
			t.Errorf("post %d: endsAt %s after the post, want %s", i, d, expiryResends*resend)
		}
		if i > 0 {
			if gap := p.at.Sub(sent[i-1].at); gap > resend+time.Second {
				t.Errorf("post %d came %s after the one before, want every %s", i, gap, resend)
			}
		}
	}
	if am.Notified("EtcdSnapshotFailing", "firing") != 1 || am.Notified("EtcdSnapshotFailing", "resolved") != 0 {
		t.Errorf("the webhook behind Alertmanager got %q; want one firing notification and no resolve", am.Notifications())
	}
	if am.Notified("OldStyle", "resolved") != 1 {
		t.Errorf("the webhook got %q; want the control alert resolved", am.Notifications())
	}
	if chat.count("EtcdSnapshotFailing firing") != 1 {
		t.Errorf("the chat notifier got %q; want one firing alert (the next after --alert-repeat 1h)", chat.sent)
	}

	// The condition clears: one post resolves it, and the webhook hears so.
	cleared := time.Now()
	if err := a.Update(ctx, nil, cleared, true); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); am.Notified("EtcdSnapshotFailing", "resolved") == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no resolved notification 10s after the condition cleared; the webhook got %q", am.Notifications())
		}
	}
	if got := am.Alert(t, "EtcdSnapshotFailing"); got != nil {
		t.Errorf("Alertmanager still lists EtcdSnapshotFailing after it resolved: %+v", got)
	}
	resolved := posts.since(cleared)
	if len(resolved) == 0 || len(resolved[0].alerts) != 1 || !resolved[0].alerts[0].EndsAt.Equal(cleared) {
		t.Errorf("posts after the condition cleared: %+v; want the alert with endsAt %s", resolved, cleared)
	}
	if chat.count("EtcdSnapshotFailing resolved") != 1 {
		t.Errorf("the chat notifier got %q; want the resolve", chat.sent)
	}
}

// pushes records the alerts an Alertmanager stand-in is posted, as "name severity state".
func pushes(t *testing.T) (*Alertmanager, func() []string) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var alerts []amAlert
		if err := json.NewDecoder(r.Body).Decode(&alerts); err != nil {
			t.Error(err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, a := range alerts {
			state := "firing"
			if !a.EndsAt.After(time.Now()) {
				state = "resolved"
			}
			got = append(got, a.Labels["alertname"]+" "+a.Labels["severity"]+" "+state)
		}
	}))
	t.Cleanup(srv.Close)
	return &Alertmanager{URL: srv.URL}, func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
}

// The pusher's decisions, one resend at a time: a follower sends nothing, a severity change
// resolves the old label set, a cleared alert is resolved (and re-sent as resolved, as
// Prometheus does), a follower never resolves.
func TestAlertmanagerPusher(t *testing.T) {
	am, take := pushes(t)
	p := newAMPusher([]Alertmanager{*am}, time.Minute)
	ctx := context.Background()
	t0 := time.Now()
	warn := Alert{Name: "EtcdSnapshotTooOld", Cluster: "prod", Severity: "warning", StartsAt: t0}
	crit := warn
	crit.Severity = "critical"
	steps := []struct {
		active []Alert
		send   bool
		want   string
	}{
		{[]Alert{warn}, false, ""}, // a follower keeps quiet
		{[]Alert{warn}, true, "EtcdSnapshotTooOld warning firing"},
		{[]Alert{warn}, true, "EtcdSnapshotTooOld warning firing"}, // every resend
		{[]Alert{crit}, true, "EtcdSnapshotTooOld critical firing, EtcdSnapshotTooOld warning resolved"},
		{nil, true, "EtcdSnapshotTooOld critical resolved, EtcdSnapshotTooOld warning resolved"},
		{[]Alert{warn}, true, "EtcdSnapshotTooOld critical resolved, EtcdSnapshotTooOld warning firing"},
		{nil, false, ""}, // a follower neither resends nor resolves
	}
	for i, s := range steps {
		p.set(s.active, time.Now(), s.send)
		p.pushOnce(ctx, time.Now())
		if got := strings.Join(take(), ", "); got != s.want {
			t.Fatalf("step %d: pushed %q, want %q", i, got, s.want)
		}
	}
	// Resolved alerts are re-sent for resolvedRetention, then dropped.
	p.set([]Alert{warn}, time.Now(), true)
	p.set(nil, time.Now(), true)
	p.pushOnce(ctx, time.Now().Add(resolvedRetention+time.Minute))
	if got := take(); len(got) != 0 {
		t.Fatalf("pushed %q after the resolved alerts' retention", got)
	}
}

// A slow Alertmanager delays neither Update nor the other Alertmanager: each post gives up
// after the resend interval.
func TestSlowAlertmanagerDoesNotBlock(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	fast, take := pushes(t)
	a := &Alerter{Notifiers: []Notifier{Alertmanager{URL: slow.URL}, *fast}, Repeat: time.Hour, Resend: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	start := time.Now()
	if err := a.Update(ctx, []Alert{{Name: "EtcdSnapshotMissing", Cluster: "prod", Severity: "critical"}}, time.Now(), true); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Update took %s with a hanging Alertmanager", d)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if got := take(); len(got) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the responsive Alertmanager got nothing while the other hung")
		}
	}
	// Three more resends within 3.5 s: a hanging post is abandoned after one interval.
	time.Sleep(3500 * time.Millisecond)
	if got := take(); len(got) < 2 {
		t.Errorf("the responsive Alertmanager got %d resends in 3.5 s, want one a second or so: %q", len(got), got)
	}
}

func (r *recorder) count(line string) int {
	n := 0
	for _, s := range r.sent {
		if s == line {
			n++
		}
	}
	return n
}
