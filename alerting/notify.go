package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Alert is one firing or resolved condition. Name is the alert's identity, e.g.
// EtcdSnapshotTooOld; Resolved alerts carry EndsAt.
type Alert struct {
	Name     string
	Cluster  string
	Severity string // critical or warning
	// Summary is the rule's one line, the same at every send; Description says what the
	// daemon saw (ages, errors, counts) and what to do; RunbookURL is the alert's section
	// of the runbook. They are the annotations the PrometheusRule gives the same alert.
	Summary     string
	Description string
	RunbookURL  string
	StartsAt    time.Time
	EndsAt      time.Time // zero while firing
}

// Resolved reports whether the alert has cleared.
func (a Alert) Resolved() bool { return !a.EndsAt.IsZero() }

// Notifier delivers alerts somewhere a person will see them.
type Notifier interface {
	Notify(ctx context.Context, alerts []Alert) error
	String() string // for logs; never includes secrets in the URL's query
}

func post(ctx context.Context, client *http.Client, rawURL string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("invalid receiver URL %s: check its syntax", redactURL(rawURL))
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		// http.Client's errors quote the whole URL, secrets included.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			ue.URL = redactURL(rawURL)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s answered %s: %s", redactURL(rawURL), resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// redactURL keeps only the scheme and host of a receiver's URL: Slack's path carries its
// token, a query may carry one, and an Alertmanager URL may carry user:password.
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return "(a URL without scheme://)"
	}
	host, path, hasPath := strings.Cut(rest, "/")
	if !hasPath {
		host, _, hasPath = strings.Cut(rest, "?")
	}
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		host = "***@" + host[i+1:]
	}
	if hasPath && path != "" || strings.ContainsRune(rest, '?') {
		return scheme + "://" + host + "/…"
	}
	return scheme + "://" + host
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// Webhook posts {"alerts": [...]} with every field, for any receiver that takes JSON.
type Webhook struct{ URL string }

type webhookAlert struct {
	Name        string     `json:"alertname"`
	Cluster     string     `json:"cluster"`
	Severity    string     `json:"severity"`
	Status      string     `json:"status"` // firing or resolved
	Summary     string     `json:"summary"`
	Description string     `json:"description,omitempty"`
	RunbookURL  string     `json:"runbook_url,omitempty"`
	StartsAt    time.Time  `json:"starts_at"`
	EndsAt      *time.Time `json:"ends_at,omitempty"`
}

func (w Webhook) Notify(ctx context.Context, alerts []Alert) error {
	out := make([]webhookAlert, len(alerts))
	for i, a := range alerts {
		out[i] = webhookAlert{Name: a.Name, Cluster: a.Cluster, Severity: a.Severity, Status: "firing",
			Summary: a.Summary, Description: a.Description, RunbookURL: a.RunbookURL, StartsAt: a.StartsAt}
		if a.Resolved() {
			end := a.EndsAt
			out[i].Status, out[i].EndsAt = "resolved", &end
		}
	}
	return post(ctx, httpClient, w.URL, map[string]any{"alerts": out})
}

func (w Webhook) String() string { return "webhook " + redactURL(w.URL) }

// Slack posts to an incoming webhook, one line per alert.
type Slack struct{ URL string }

func (s Slack) Notify(ctx context.Context, alerts []Alert) error {
	var lines []string
	for _, a := range alerts {
		icon, state := ":rotating_light:", strings.ToUpper(a.Severity)
		if a.Resolved() {
			icon, state = ":white_check_mark:", "RESOLVED"
		}
		line := fmt.Sprintf("%s *%s* %s (cluster %s): %s", icon, state, a.Name, a.Cluster, a.Summary)
		if !a.Resolved() && a.Description != "" {
			line += " " + a.Description
		}
		if a.RunbookURL != "" {
			line += " <" + a.RunbookURL + "|runbook>"
		}
		lines = append(lines, line)
	}
	return post(ctx, httpClient, s.URL, map[string]string{"text": strings.Join(lines, "\n")})
}

func (s Slack) String() string { return "slack " + redactURL(s.URL) }
