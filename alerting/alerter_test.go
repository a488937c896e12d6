package alerting

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// recorder is a Notifier that remembers what it was sent and can be made to fail.
type recorder struct {
	sent []string
	fail bool
}

func (r *recorder) Notify(_ context.Context, alerts []Alert) error {
	if r.fail {
		return errors.New("receiver down")
	}
	for _, a := range alerts {
		state := "firing"
		if a.Resolved() {
			state = "resolved"
		}
		r.sent = append(r.sent, a.Name+" "+state)
	}
	return nil
}

func (r *recorder) String() string { return "recorder" }

func TestAlerter(t *testing.T) {
	rec := &recorder{}
	a := &Alerter{Notifiers: []Notifier{rec}, Repeat: time.Hour}
	t0 := time.Now()
	tooOld := []Alert{{Name: "EtcdSnapshotTooOld", Severity: "critical"}}
	steps := []struct {
		at     time.Duration
		active []Alert
		send   bool
		fail   bool
		want   string // what was delivered in this step
	}{
		{0, tooOld, true, false, "EtcdSnapshotTooOld firing"},
		{time.Minute, tooOld, true, false, ""},                               // no repeat before Repeat
		{61 * time.Minute, tooOld, true, false, "EtcdSnapshotTooOld firing"}, // reminder
		{62 * time.Minute, nil, true, true, ""},                              // resolve fails: retried
		{63 * time.Minute, nil, true, false, "EtcdSnapshotTooOld resolved"},
		{64 * time.Minute, nil, true, false, ""},
		{65 * time.Minute, tooOld, false, false, ""}, // a follower keeps quiet
		{66 * time.Minute, nil, false, false, ""},    // and never resolves what it did not send
		{67 * time.Minute, tooOld, true, false, "EtcdSnapshotTooOld firing"},
		{68 * time.Minute, tooOld, false, false, ""}, // leadership moved: quiet
		// but what it paged it resolves: the new leader may never have had it
		{69 * time.Minute, nil, false, false, "EtcdSnapshotTooOld resolved"},
	}
	for i, s := range steps {
		rec.fail = s.fail
		before := len(rec.sent)
		err := a.Update(context.Background(), s.active, t0.Add(s.at), s.send)
		if (err != nil) != s.fail {
			t.Fatalf("step %d: err %v", i, err)
		}
		if got := strings.Join(rec.sent[before:], ", "); got != s.want {
			t.Fatalf("step %d (%s): delivered %q, want %q", i, s.at, got, s.want)
		}
	}
}

// An alert whose severity rises is a new alert (Alertmanager tells them apart by labels):
// the critical one fires at once, not at the next reminder, and the warning resolves.
func TestAlerterSeverityChange(t *testing.T) {
	var got []string
	n := notifierFunc(func(alerts []Alert) {
		for _, a := range alerts {
			state := "firing"
			if a.Resolved() {
				state = "resolved"
			}
			got = append(got, a.Severity+" "+state)
		}
	})
	a := &Alerter{Notifiers: []Notifier{n}, Repeat: time.Hour}
	t0 := time.Now()
	if err := a.Update(context.Background(), []Alert{SnapshotAging.Alert("c1", "4h old")}, t0, true); err != nil {
		t.Fatal(err)
	}
	if err := a.Update(context.Background(), []Alert{SnapshotTooOld.Alert("c1", "6h old")}, t0.Add(time.Minute), true); err != nil {
		t.Fatal(err)
	}
	if want := []string{"warning firing", "critical firing", "warning resolved"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

type notifierFunc func([]Alert)

func (f notifierFunc) Notify(_ context.Context, alerts []Alert) error { f(alerts); return nil }
func (f notifierFunc) String() string                                 { return "func" }
