package deploy

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/testharness"
)

func decodeStrictYAML(t *testing.T, file string, b []byte, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s does not decode strictly into %T: %v", file, v, err)
	}
}

func readFile(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func prometheusRule(t *testing.T) monitoringv1.PrometheusRule {
	t.Helper()
	var r monitoringv1.PrometheusRule
	decodeStrictYAML(t, "prometheus-rule.yaml", readFile(t, "prometheus-rule.yaml"), &r)
	if r.APIVersion != "monitoring.coreos.com/v1" || r.Kind != "PrometheusRule" {
		t.Fatalf("prometheus-rule.yaml is a %s %s, not a monitoring.coreos.com/v1 PrometheusRule", r.APIVersion, r.Kind)
	}
	return r
}

// runbookAnchors are the anchors GitHub gives the "## Name" headings of a runbook.
func runbookAnchors(t *testing.T, file string) map[string]bool {
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(readFile(t, file)), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			anchors[strings.ToLower(strings.ReplaceAll(strings.TrimSpace(h), " ", "-"))] = true
		}
	}
	return anchors
}

// The PrometheusRule is alerting.Catalog, alert for alert: the same names, severities,
// summaries and runbook_url, each URL at a section of deploy/runbooks/alerts.md, with a
// description, and labels a rule selector can match. The daemon raises its notifications
// from the same table, so an alert has one severity wherever it comes from.
func TestPrometheusRuleIsTheCatalog(t *testing.T) {
	r := prometheusRule(t)
	if r.Labels["release"] == "" {
		t.Errorf("the PrometheusRule has no release label: kube-prometheus-stack's default ruleSelector skips it")
	}
	runbook, ok := strings.CutPrefix(alerting.RunbookBase, "https://github.com/etcdguard/etcdguard/blob/main/")
	if !ok {
		t.Fatalf("RunbookBase %s is not a file of this repository", alerting.RunbookBase)
	}
	anchors := runbookAnchors(t, filepath.Join("..", runbook))
	type key struct{ name, severity string }
	want := map[key]alerting.Rule{}
	for _, c := range alerting.Catalog {
		if c.Severity != alerting.SeverityCritical && c.Severity != alerting.SeverityWarning {
			t.Errorf("catalog: %s has severity %q, not critical or warning", c.Name, c.Severity)
		}
		if _, dup := want[key{c.Name, c.Severity}]; dup {
			t.Errorf("catalog: %s %s twice", c.Name, c.Severity)
		}
		want[key{c.Name, c.Severity}] = c
	}
	seen := map[key]bool{}
	for _, g := range r.Spec.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == "" {
				t.Errorf("group %s: a recording rule %s; only alerts belong here", g.Name, rule.Record)
				continue
			}
			k := key{rule.Alert, rule.Labels["severity"]}
			c, ok := want[k]
			if !ok {
				t.Errorf("%s with severity %q is not in alerting.Catalog", k.name, k.severity)
				continue
			}
			if seen[k] {
				t.Errorf("%s %s: two rules", k.name, k.severity)
			}
			seen[k] = true
			if len(rule.Labels) != 1 {
				t.Errorf("%s: labels %v; only severity (the rest comes from the series)", k.name, rule.Labels)
			}
			a := rule.Annotations
			if keys := slices.Sorted(maps.Keys(a)); !slices.Equal(keys, []string{"description", "runbook_url", "summary"}) {
				t.Errorf("%s %s: annotations %v, want description, runbook_url and summary", k.name, k.severity, keys)
			}
			if got := ruleFor(t, rule.For); got != c.For {
				t.Errorf("%s %s: for %s, the catalog (and so the daemon) waits %s", k.name, k.severity, got, c.For)
			}
			if a["summary"] != c.Summary {
				t.Errorf("%s %s: summary %q, the catalog says %q", k.name, k.severity, a["summary"], c.Summary)
			}
			if a["runbook_url"] != c.RunbookURL() {
				t.Errorf("%s %s: runbook_url %q, the catalog says %q", k.name, k.severity, a["runbook_url"], c.RunbookURL())
			}
			if _, frag, _ := strings.Cut(a["runbook_url"], "#"); !anchors[frag] {
				t.Errorf("%s: runbook_url %s: %s has no section #%s", k.name, a["runbook_url"], runbook, frag)
			}
			if len(a["description"]) < 40 {
				t.Errorf("%s %s: description %q says too little", k.name, k.severity, a["description"])
			}
		}
	}
	for k := range want {
		if !seen[k] {
			t.Errorf("no rule for %s %s (alerting.Catalog has it)", k.name, k.severity)
		}
	}
}

// The monitoring README's table lists every alert of the catalog with its severity and who
// raises it, so what it tells users to choose between is what the code does.
func TestMonitoringDocListsTheCatalog(t *testing.T) {
	row := regexp.MustCompile(`^\| (\w+) \| (critical|warning) \| (both|Prometheus) \|`)
	var rows []string
	for _, line := range strings.Split(string(readFile(t, "monitoring/README.md")), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			rows = append(rows, m[1]+" "+m[2]+" "+m[3])
		}
	}
	var want []string
	for _, c := range alerting.Catalog {
		by := "Prometheus"
		if c.Daemon {
			by = "both"
		}
		want = append(want, c.Name+" "+c.Severity+" "+by)
	}
	if !slices.Equal(rows, want) {
		t.Fatalf("monitoring/README.md's alert table:\n%s\nalerting.Catalog:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
}

// ruleTests is prometheus-rule.test.yaml, as promtool reads it (the fields it uses).
type ruleTests struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// writeRuleFiles puts the PrometheusRule's spec (its groups, as Prometheus reads a rules
// file) into dir/rules.yaml beside a copy of prometheus-rule.test.yaml.
func writeRuleFiles(t *testing.T, dir string, edit func(expr string) string) {
	t.Helper()
	var doc struct {
		Spec struct {
			Groups []map[string]any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, "prometheus-rule.yaml"), &doc); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		for _, g := range doc.Spec.Groups {
			for _, r := range g["rules"].([]any) {
				r := r.(map[string]any)
				r["expr"] = edit(r["expr"].(string))
			}
		}
	}
	rules, err := yaml.Marshal(map[string]any{"groups": doc.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"rules.yaml": rules, "prometheus-rule.test.yaml": readFile(t, "prometheus-rule.test.yaml")} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func promtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testharness.Bin(t, "promtool"), args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// The rules as shipped, run by promtool (built from github.com/prometheus/prometheus by
// scripts/tools.sh): `check rules` lints them, `test rules` runs prometheus-rule.test.yaml,
// which for every alert has series that fire it (and when), and series that must not.
func TestPromtoolRules(t *testing.T) {
	var tests ruleTests
	decodeStrictYAML(t, "prometheus-rule.test.yaml", readFile(t, "prometheus-rule.test.yaml"), &tests)
	if !slices.Equal(tests.RuleFiles, []string{"rules.yaml"}) {
		t.Fatalf("prometheus-rule.test.yaml reads %v; the test writes the rules to rules.yaml", tests.RuleFiles)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) == 0 {
				quiet[at.Alertname] = true
			}
			for _, a := range at.ExpAlerts {
				fires[at.Alertname+" "+a.ExpLabels["severity"]] = true
			}
		}
	}
	for _, c := range alerting.Catalog {
		if !fires[c.Name+" "+c.Severity] {
			t.Errorf("prometheus-rule.test.yaml never fires %s %s", c.Name, c.Severity)
		}
		if !quiet[c.Name] {
			t.Errorf("prometheus-rule.test.yaml has no case where %s must not fire", c.Name)
		}
	}

	dir := t.TempDir()
	writeRuleFiles(t, dir, nil)
	out, err := promtool(t, dir, "check", "rules", "rules.yaml")
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Logf("promtool check rules:\n%s", out)
	out, err = promtool(t, dir, "test", "rules", "prometheus-rule.test.yaml")
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool test rules:\n%s", out)

	// The tests can fail: with rules that never fire, every alert's firing case fails.
	broken := t.TempDir()
	writeRuleFiles(t, broken, func(string) string { return "vector(1) == 0" })
	out, err = promtool(t, broken, "test", "rules", "prometheus-rule.test.yaml")
	if err == nil {
		t.Fatalf("promtool test rules passed with rules that never fire:\n%s", out)
	}
	for _, c := range alerting.Catalog {
		if !strings.Contains(out, "alertname: "+c.Name+",") {
			t.Errorf("with rules that never fire, no test of %s failed:\n%s", c.Name, out)
		}
	}
}

func staticPod(t *testing.T) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	decodeStrictYAML(t, "static-pod.yaml", readFile(t, "static-pod.yaml"), &pod)
	return pod
}

func containerPort(pod corev1.Pod, name string) (int32, bool) {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return p.ContainerPort, true
			}
		}
	}
	return 0, false
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false // selects everything: never what is meant here
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// The PodMonitor finds the static pods of static-pod.yaml and scrapes their metrics port.
func TestPodMonitor(t *testing.T) {
	pod := staticPod(t)
	var pm monitoringv1.PodMonitor
	decodeStrictYAML(t, "monitoring/podmonitor.yaml", readFile(t, "monitoring/podmonitor.yaml"), &pm)
	if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Kind != "PodMonitor" || pm.Labels["release"] == "" {
		t.Fatalf("podmonitor.yaml: %s %s, labels %v", pm.APIVersion, pm.Kind, pm.Labels)
	}
	if !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{pod.Namespace}) || len(pm.Spec.Selector.MatchExpressions) > 0 ||
		!selects(pm.Spec.Selector.MatchLabels, pod.Labels) {
		t.Errorf("the PodMonitor selects %v in %v, not the static pod (%v in %s)", pm.Spec.Selector, pm.Spec.NamespaceSelector.MatchNames, pod.Labels, pod.Namespace)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("%d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Port == nil || ep.PortNumber != nil {
		t.Fatalf("the endpoint's port is not given by name")
	}
	if n, ok := containerPort(pod, *ep.Port); !ok {
		t.Errorf("the PodMonitor scrapes port %q, which static-pod.yaml does not name", *ep.Port)
	} else {
		t.Logf("the PodMonitor scrapes port %s = %d", *ep.Port, n)
	}
	if ep.Path != "" && ep.Path != "/metrics" {
		t.Errorf("path %s", ep.Path)
	}
}

// The headless Service selects the static pods and targets their metrics port by name;
// the ServiceMonitor selects the Service and scrapes that port.
func TestServiceMonitor(t *testing.T) {
	pod := staticPod(t)
	docs := strings.Split(string(readFile(t, "monitoring/service-monitor.yaml")), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("service-monitor.yaml has %d documents, want a Service and a ServiceMonitor", len(docs))
	}
	var svc corev1.Service
	var sm monitoringv1.ServiceMonitor
	decodeStrictYAML(t, "service-monitor.yaml (Service)", []byte(docs[0]), &svc)
	decodeStrictYAML(t, "service-monitor.yaml (ServiceMonitor)", []byte(docs[1]), &sm)
	if svc.Kind != "Service" || svc.APIVersion != "v1" || sm.Kind != "ServiceMonitor" || sm.APIVersion != "monitoring.coreos.com/v1" {
		t.Fatalf("service-monitor.yaml holds %s %s and %s %s", svc.APIVersion, svc.Kind, sm.APIVersion, sm.Kind)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Namespace != pod.Namespace || !selects(svc.Spec.Selector, pod.Labels) {
		t.Errorf("the Service (clusterIP %q, %s, selector %v) is not a headless one over the static pods (%s, %v)",
			svc.Spec.ClusterIP, svc.Namespace, svc.Spec.Selector, pod.Namespace, pod.Labels)
	}
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("the Service has %d ports, want 1", len(svc.Spec.Ports))
	}
	sp := svc.Spec.Ports[0]
	if _, ok := containerPort(pod, sp.TargetPort.StrVal); !ok || sp.TargetPort.StrVal == "" {
		t.Errorf("the Service's targetPort %s is not a port static-pod.yaml names", sp.TargetPort.String())
	}
	if sm.Labels["release"] == "" || !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{svc.Namespace}) || !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
		t.Errorf("the ServiceMonitor (labels %v, selector %v in %v) does not select the Service (%v in %s)",
			sm.Labels, sm.Spec.Selector.MatchLabels, sm.Spec.NamespaceSelector.MatchNames, svc.Labels, svc.Namespace)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != sp.Name {
		t.Fatalf("the ServiceMonitor's endpoints %+v do not scrape the Service's port %s", sm.Spec.Endpoints, sp.Name)
	}
}

// The labels are configurable as monitoring/README.md says: kubectl (built from
// k8s.io/kubernetes by scripts/tools.sh) relabels each manifest locally for another Helm
// release, and what it prints still decodes strictly, with the new label.
func TestRelabelForAnotherRelease(t *testing.T) {
	readme := string(readFile(t, "monitoring/README.md"))
	if !strings.Contains(readme, `kubectl label --overwrite -f "$f" release=my-release --local -o yaml | kubectl apply -f -`) {
		t.Fatal("monitoring/README.md no longer relabels with kubectl label --local")
	}
	relabel := func(file string, v any) map[string]string {
		c := exec.Command(testharness.Bin(t, "kubectl"), "label", "--overwrite", "-f", file, "release=my-release", "--local", "-o", "yaml")
		c.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "none"))
		out, err := c.Output()
		if err != nil {
			t.Fatalf("kubectl label --local -f %s: %v", file, err)
		}
		decodeStrictYAML(t, "relabelled "+file, out, v)
		var m struct {
			Metadata struct{ Labels map[string]string } `json:"metadata"`
		}
		if err := yaml.Unmarshal(out, &m); err != nil {
			t.Fatal(err)
		}
		return m.Metadata.Labels
	}
	var r monitoringv1.PrometheusRule
	var pm monitoringv1.PodMonitor
	for file, v := range map[string]any{"prometheus-rule.yaml": &r, "monitoring/podmonitor.yaml": &pm} {
		if l := relabel(file, v); l["release"] != "my-release" || l["app.kubernetes.io/name"] != "etcdguard" {
			t.Errorf("%s relabelled: %v", file, l)
		}
	}
	if len(r.Spec.Groups) == 0 || len(pm.Spec.PodMetricsEndpoints) == 0 {
		t.Fatal("relabelling lost the spec")
	}
}

// ruleFor is a rule's `for`, zero when it has none.
func ruleFor(t *testing.T, d *monitoringv1.Duration) time.Duration {
	t.Helper()
	if d == nil || *d == "" {
		return 0
	}
	v, err := model.ParseDuration(string(*d))
	if err != nil {
		t.Fatalf("for %q: %v", *d, err)
	}
	return time.Duration(v)
}
