package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/daemon"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// dashboard holds the fields Grafana needs to load and draw the dashboard.
type dashboard struct {
	Title         string                        `json:"title"`
	UID           string                        `json:"uid"`
	SchemaVersion int                           `json:"schemaVersion"`
	Panels        []dashPanel                   `json:"panels"`
	Templating    struct{ List []dashVariable } `json:"templating"`
}

type dashPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID        string `json:"refId"`
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // a collapsed row's
}

type dashVariable struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	Query      any    `json:"query"` // a string, or the Prometheus query editor's object
	Definition string `json:"definition"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
}

// What each template variable stands for when an expression is checked: Grafana's
// built-in intervals and one value of each dashboard variable.
var dashboardSubstitutes = map[string]string{
	"__rate_interval": "5m", "__interval": "1m", "__range": "1h",
	"cluster": "c1",
}

var templateVar = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)`)

// TestGrafanaDashboard: deploy/grafana/etcdguard-dashboard.json loads as a Grafana
// dashboard, every expression parses as PromQL once its variables are substituted, every
// metric it uses is one a running daemon exports, and every etcdguard metric is shown.
func TestGrafanaDashboard(t *testing.T) {
	var d dashboard
	// Not strict: Grafana's model has hundreds of fields; these are the ones it needs.
	b, err := os.ReadFile("grafana/etcdguard-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/etcdguard-dashboard.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 36 {
		t.Fatalf("dashboard needs a title, a uid and a current schemaVersion: %q %q %d", d.Title, d.UID, d.SchemaVersion)
	}
	vars := map[string]dashVariable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
		if _, ok := dashboardSubstitutes[v.Name]; !ok && v.Type != "datasource" {
			t.Errorf("variable $%s has no test substitute: add one to dashboardSubstitutes", v.Name)
		}
	}
	if v := vars["datasource"]; v.Type != "datasource" || v.Query != "prometheus" {
		t.Errorf("want a datasource variable of Prometheus data sources, got %+v", v)
	}
	cv := vars["cluster"]
	if cv.Type != "query" || cv.Datasource == nil || cv.Datasource.UID != "${datasource}" {
		t.Errorf("want a cluster query variable on ${datasource}, got %+v", cv)
	}
	m := regexp.MustCompile(`^label_values\((\w+), cluster\)$`).FindStringSubmatch(cv.Definition)
	if m == nil {
		t.Fatalf("cluster variable: want label_values(METRIC, cluster), got %q", cv.Definition)
	}
	used := map[string]bool{m[1]: true}

	var panels []dashPanel
	for _, p := range d.Panels {
		panels = append(panels, p)
		panels = append(panels, p.Panels...)
	}
	ids := map[int]bool{}
	cells := map[[2]int]string{} // 24-column grid cells, to catch overlapping panels
	queries := 0
	for _, p := range panels {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID == 0 || ids[p.ID] {
			t.Errorf("%s: ids must be unique and non-zero", where)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v off the 24-column grid", where, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := cells[[2]int{x, y}]; ok {
					t.Errorf("%s overlaps %s", where, other)
				}
				cells[[2]int{x, y}] = where
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("%s: needs a title, the ${datasource} data source and targets", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			queries++
			if tg.RefID == "" || refs[tg.RefID] || tg.Expr == "" {
				t.Errorf("%s: target %q needs a unique refId and an expr", where, tg.RefID)
			}
			refs[tg.RefID] = true
			expr, err := substitute(tg.Expr)
			if err != nil {
				t.Errorf("%s %s: %v", where, tg.RefID, err)
				continue
			}
			parsed, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
			if err != nil {
				t.Errorf("%s %s: %q does not parse: %v", where, tg.RefID, expr, err)
				continue
			}
			if strings.Contains(tg.Expr, "etcdguard_") && !strings.Contains(tg.Expr, `cluster=~"$cluster"`) {
				t.Errorf("%s %s: every selector must follow $cluster: %s", where, tg.RefID, tg.Expr)
			}
			parser.Inspect(parsed, func(n parser.Node, _ []parser.Node) error {
				if vs, ok := n.(*parser.VectorSelector); ok {
					used[metricName(vs)] = true
				}
				return nil
			})
		}
	}
	if queries < 10 {
		t.Fatalf("only %d queries: the dashboard lost its panels", queries)
	}

	exported := daemonMetrics(t)
	for name := range used {
		if !exported[name] {
			t.Errorf("the dashboard uses %q, which the daemon does not export", name)
		}
	}
	for name := range exported {
		if strings.HasPrefix(name, "etcdguard_") && !used[name] {
			t.Errorf("the daemon exports %s but the dashboard shows it nowhere", name)
		}
	}
}

// substitute replaces template variables by the values Grafana would give them.
func substitute(expr string) (string, error) {
	var unknown []string
	out := templateVar.ReplaceAllStringFunc(expr, func(s string) string {
		m := templateVar.FindStringSubmatch(s)
		name := m[1] + m[2]
		v, ok := dashboardSubstitutes[name]
		if !ok {
			unknown = append(unknown, s)
		}
		return v
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("unknown template variables %v in %q", unknown, expr)
	}
	return out, nil
}

func metricName(vs *parser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == "__name__" {
			return m.Value
		}
	}
	return ""
}

// daemonMetrics starts a real daemon (embedded etcd, a directory store) and returns the
// sample names its /metrics serves: a histogram's _bucket, _sum and _count series.
func daemonMetrics(t *testing.T) map[string]bool {
	t.Helper()
	e := testharness.StartEtcd(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(daemon.Config{
		Etcd: etcdclient.Config{Endpoints: e.Endpoints, DialTimeout: 2 * time.Second}, Store: st, Cluster: "c1",
		Schedule: "@every 1h", Save: snapshot.SaveOptions{Compression: "zstd", Level: "fastest"},
		Retention: snapshot.Retention{Last: 3}, Policy: alerting.Policy{MaxAge: 5 * time.Hour},
		ElectionTTL: 2 * time.Second, Listen: "127.0.0.1:0", Delta: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	resp, err := http.Get("http://" + d.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("/metrics: %s: %s", resp.Status, b)
	}
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "#" || f[1] != "TYPE" {
			continue
		}
		// A histogram or summary has no series under its own name.
		switch f[3] {
		case "histogram":
			names[f[2]+"_bucket"], names[f[2]+"_sum"], names[f[2]+"_count"] = true, true, true
		case "summary":
			names[f[2]], names[f[2]+"_sum"], names[f[2]+"_count"] = true, true, true
		default:
			names[f[2]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !names["etcdguard_snapshot_age_seconds"] {
		t.Fatalf("the daemon's /metrics has no etcdguard_snapshot_age_seconds: %v", names)
	}
	return names
}
