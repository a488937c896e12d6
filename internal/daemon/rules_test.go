package daemon

import (
	"os"
	"slices"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// deploy/prometheus-rule.yaml: every expression parses as PromQL and every metric it
// uses is one the daemon exports.
func TestPrometheusRules(t *testing.T) {
	b, err := os.ReadFile("../../deploy/prometheus-rule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Alert       string            `json:"alert"`
					Expr        string            `json:"expr"`
					For         string            `json:"for"`
					Labels      map[string]string `json:"labels"`
					Annotations map[string]string `json:"annotations"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(b, &rule); err != nil {
		t.Fatalf("prometheus-rule.yaml: %v", err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		t.Fatalf("not a PrometheusRule: %s %s", rule.APIVersion, rule.Kind)
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
			expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr)
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
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s has no severity or summary", r.Alert)
			}
		}
	}
	for _, want := range []string{"EtcdSnapshotTooOld", "EtcdSnapshotMissing", "EtcdSnapshotFailing", "EtcdguardDown", "EtcdDeltaLagHigh", "EtcdDeltaGap"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no %s rule", want)
		}
	}
}
