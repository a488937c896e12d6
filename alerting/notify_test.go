package alerting

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A notifier's errors and the alerter's logs never show the secret of its URL: the
// token in a Slack webhook's path, the user:password of an Alertmanager URL. Each
// receiver fails the way a real one does: closing the connection, or answering 500.
func TestNotifyErrorsHideSecrets(t *testing.T) {
	const secret = "T000-s3cr3t-B000"
	closing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}))
	defer closing.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer failing.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()

	withUser := func(base string) string { return strings.Replace(base, "http://", "http://admin:"+secret+"@", 1) }
	var notifiers []Notifier
	for _, base := range []string{closing.URL, failing.URL, refused} {
		notifiers = append(notifiers,
			Slack{URL: base + "/services/" + secret},
			Webhook{URL: base + "/hook/" + secret + "?token=" + secret},
			Alertmanager{URL: withUser(base)},
		)
	}
	var logs bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	alert := []Alert{{Name: "EtcdSnapshotTooOld", Severity: "critical", StartsAt: time.Now()}}
	for _, n := range notifiers {
		t.Run(n.String(), func(t *testing.T) {
			if strings.Contains(n.String(), secret) {
				t.Fatalf("String() = %q shows the secret", n.String())
			}
			err := n.Notify(context.Background(), alert)
			if err == nil {
				t.Fatal("Notify to a failing receiver returned nil")
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
	a := &Alerter{Notifiers: notifiers, Repeat: time.Hour}
	if err := a.Update(context.Background(), alert, time.Now(), true); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("alerter error: %v", err)
	}
	a.am.pushOnce(context.Background(), time.Now()) // the Alertmanagers' posts, which Run makes
	if !strings.Contains(logs.String(), `notifier="alertmanager http://***@127.0.0.1:`) {
		t.Errorf("logs show no failed Alertmanager post:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), secret) || !strings.Contains(logs.String(), "alert delivery failed") {
		t.Errorf("logs show the secret or no failure:\n%s", logs.String())
	}
}

// Every receiver gets what on-call needs from the alert: the rule's summary, what the
// daemon saw (description) and where the runbook is, firing or not.
func TestNotificationsCarryDescriptionAndRunbook(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		// As the receiver's JSON decoder reads them: encoding/json escapes < and >.
		got = append(got, r.URL.Path+" "+strings.NewReplacer(`\u003c`, "<", `\u003e`, ">").Replace(string(b)))
	}))
	defer srv.Close()
	a := SnapshotTooOld.Alert("prod", "the newest, 20261130T010000Z-abcdef, is 6h0m0s old")
	a.StartsAt = time.Now()
	for _, tc := range []struct {
		n    Notifier
		want []string
	}{
		{Webhook{URL: srv.URL + "/hook"}, []string{`"summary":"` + SnapshotTooOld.Summary, `"description":"the newest, 20261130T010000Z-abcdef`, `"runbook_url":"` + SnapshotTooOld.RunbookURL()}},
		{Slack{URL: srv.URL + "/slack"}, []string{SnapshotTooOld.Summary + " the newest, 20261130T010000Z-abcdef", "<" + SnapshotTooOld.RunbookURL() + "|runbook>"}},
		{Alertmanager{URL: srv.URL}, []string{`"summary":"` + SnapshotTooOld.Summary, `"description":"the newest, 20261130T010000Z-abcdef`, `"runbook_url":"` + SnapshotTooOld.RunbookURL()}},
	} {
		got = nil
		if err := tc.n.Notify(context.Background(), []Alert{a}); err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if len(got) != 1 || !strings.Contains(got[0], w) {
				t.Errorf("%s was sent %q, want it to contain %q", tc.n, got, w)
			}
		}
	}
}
