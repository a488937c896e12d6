package daemon

import (
	"os"
	"slices"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/etcdguard/etcdguard/alerting"
)

// deploy/prometheus-rule.yaml: every expression parses as PromQL and every metric it
// uses is one the daemon exports.
func TestPrometheusRules(t *testing.T) {
	b, err := os.ReadFile("../../deploy/prometheus-rule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule monitoringv1.PrometheusRule
	if err := yaml.UnmarshalStrict(b, &rule); err != nil {
		t.Fatalf("prometheus-rule.yaml: %v", err)
	}
	families, err := newMetrics("c1").reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
	}
	var alerts []string
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr.String())
			if err != nil {
				t.Errorf("%s: %v", r.Alert, err)
				continue
			}
			for _, path := range parser.ExtractSelectors(expr) {
				for _, m := range path {
					if m.Name == model.MetricNameLabel && !exported[m.Value] {
						t.Errorf("%s uses %s, which the daemon does not export", r.Alert, m.Value)
					}
				}
			}
		}
	}
	for _, c := range alerting.Catalog {
		if !slices.Contains(alerts, c.Name) {
			t.Errorf("no %s rule", c.Name)
		}
	}
}
