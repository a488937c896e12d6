package testharness

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

// AlertmanagerServer is a real Alertmanager (bin/alertmanager, built from
// github.com/prometheus/alertmanager by scripts/tools.sh) started for one test, routing
// every alert to a webhook receiver of the harness that records its notifications.
type AlertmanagerServer struct {
	URL string // http://127.0.0.1:PORT

	mu    sync.Mutex
	notes []AlertmanagerNotification // one per alert per notification
}

// AlertmanagerNotification is one alert of a webhook notification, as Alertmanager
// routed it: what reached Alertmanager, whatever it has resolved or expired since.
type AlertmanagerNotification struct {
	Status      string            `json:"status"` // firing or resolved
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
}

// AlertmanagerAlert is what GET /api/v2/alerts says of one alert.
type AlertmanagerAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	UpdatedAt   time.Time         `json:"updatedAt"`
	Status      struct {
		State string `json:"state"` // active, suppressed or unprocessed
	} `json:"status"`
}

// StartAlertmanager runs Alertmanager on a loopback port, without clustering, until the
// test ends. Alerts that come without endsAt are resolved resolveTimeout after they last
// came (Alertmanager's resolve_timeout, 5m by default); every group is flushed to the
// webhook within about a second, resolves included. It skips the test when
// bin/alertmanager has not been built, unless ETCDGUARD_E2E=1 asks for every real-server
// test to run.
func StartAlertmanager(t testing.TB, resolveTimeout time.Duration) *AlertmanagerServer {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no real Alertmanager")
	}
	if os.Getenv("ETCDGUARD_E2E") != "1" {
		if _, err := os.Stat(filepath.Join(RepoRoot(t), "bin", "alertmanager")); err != nil {
			t.Skip("bin/alertmanager not built: run `make tools` to test against a real Alertmanager")
		}
	}
	bin := Bin(t, "alertmanager")
	am := &AlertmanagerServer{}
	hook := httptest.NewServer(http.HandlerFunc(am.receive))
	t.Cleanup(hook.Close)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alertmanager.yml")
	config := fmt.Sprintf(`global:
  resolve_timeout: %s
route:
  receiver: hook
  group_by: [alertname, cluster]
  group_wait: 500ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: %s
        send_resolved: true
`, model.Duration(resolveTimeout), hook.URL)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	for range 3 { // another process may take the port between pick and bind
		if am.URL, err = startAlertmanagerOnce(t, bin, cfg, dir); err == nil {
			return am
		}
	}
	t.Fatalf("start alertmanager: %v", err)
	return nil
}

// receive records a webhook notification.
func (am *AlertmanagerServer) receive(w http.ResponseWriter, r *http.Request) {
	var n struct {
		Alerts []AlertmanagerNotification `json:"alerts"`
	}
	if err := json.NewDecoder(r.Body).Decode(&n); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	am.mu.Lock()
	defer am.mu.Unlock()
	am.notes = append(am.notes, n.Alerts...)
}

// Notified counts the webhook notifications of alertname with status (firing or resolved).
func (am *AlertmanagerServer) Notified(alertname, status string) int {
	am.mu.Lock()
	defer am.mu.Unlock()
	n := 0
	for _, a := range am.notes {
		if a.Labels["alertname"] == alertname && a.Status == status {
			n++
		}
	}
	return n
}

// Received returns the webhook notifications of alertname so far, oldest first.
func (am *AlertmanagerServer) Received(alertname string) []AlertmanagerNotification {
	am.mu.Lock()
	defer am.mu.Unlock()
	var out []AlertmanagerNotification
	for _, a := range am.notes {
		if a.Labels["alertname"] == alertname {
			out = append(out, a)
		}
	}
	return out
}

// Notifications lists every notification so far ("alertname status"), for failure messages.
func (am *AlertmanagerServer) Notifications() string {
	am.mu.Lock()
	defer am.mu.Unlock()
	var s []string
	for _, a := range am.notes {
		s = append(s, a.Labels["alertname"]+" "+a.Status)
	}
	return strings.Join(s, ", ")
}

// Alert returns the alert named alertname GET /api/v2/alerts lists now, or nil; it fails
// the test if there are several.
func (am *AlertmanagerServer) Alert(t testing.TB, alertname string) *AlertmanagerAlert {
	t.Helper()
	var found *AlertmanagerAlert
	alerts := am.Alerts(t)
	for i := range alerts {
		if alerts[i].Labels["alertname"] == alertname {
			if found != nil {
				t.Fatalf("Alertmanager lists %s twice: %+v", alertname, alerts)
			}
			found = &alerts[i]
		}
	}
	return found
}

func startAlertmanagerOnce(t testing.TB, bin, cfg, dir string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	var out syncBuffer
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=", "--log.level=debug")
	cmd.SysProcAttr = killWithParent()
	cmd.Env = []string{"HOME=" + dir}
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	url := "http://" + addr
	client := &http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := client.Get(url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case werr := <-exited:
			exited <- werr // for stop
			stop()
			return "", fmt.Errorf("alertmanager exited (%v): %s", werr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("alertmanager did not get ready on %s within 30s: %v\n%s", addr, err, out.String())
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("alertmanager output:\n%s", out.String())
		}
	})
	return url, nil
}

// Alerts returns the alerts Alertmanager holds now, as GET /api/v2/alerts lists them
// (it leaves out resolved ones).
func (am *AlertmanagerServer) Alerts(t testing.TB) []AlertmanagerAlert {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, am.URL+"/api/v2/alerts", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s/api/v2/alerts: %v", am.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/api/v2/alerts: %s", am.URL, resp.Status)
	}
	var alerts []AlertmanagerAlert
	if err := json.NewDecoder(resp.Body).Decode(&alerts); err != nil {
		t.Fatalf("decoding %s/api/v2/alerts: %v", am.URL, err)
	}
	return alerts
}
