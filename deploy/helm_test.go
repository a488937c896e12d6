package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// rendered is one chart rendering, every object decoded strictly.
type rendered struct {
	ds      *appsv1.DaemonSet
	sa      *corev1.ServiceAccount
	cm      *corev1.ConfigMap
	secret  *corev1.Secret
	pm      *helmPodMonitor
	rule    *helmRule
	kinds   []string
	objects string // the manifests, to look for leaked secrets
}

// helmPodMonitor and helmRule are the prometheus-operator fields the chart may use:
// anything else in the rendering fails the strict decode.
type helmPodMonitor struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		PodMetricsEndpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type helmRule struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		Groups []json.RawMessage `json:"groups"`
	} `json:"spec"`
}

type objectMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels"`
}

// renderChart renders deploy/helm/etcdguard with Helm's own engine, as helm template
// does, with the values files given (later ones win) and extra values on top.
func renderChart(t *testing.T, extra map[string]any, valueFiles ...string) (*rendered, error) {
	t.Helper()
	ch, err := loader.Load("helm/etcdguard")
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	vals := map[string]any{}
	for _, f := range valueFiles {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		vals = chartutil.CoalesceTables(v, vals)
	}
	vals = chartutil.CoalesceTables(extra, vals)
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: "etcdguard", Namespace: "kube-system", IsInstall: true, Revision: 1}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	out, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	r := &rendered{}
	for _, name := range slices.Sorted(maps.Keys(out)) {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out[name], -1) {
			if strings.TrimSpace(doc) == "" || isOnlyComments(doc) {
				continue
			}
			r.objects += doc
			if err := r.decode(name, []byte(doc)); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
		}
	}
	return r, nil
}

func isOnlyComments(doc string) bool {
	for _, l := range strings.Split(doc, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

func (r *rendered) decode(name string, doc []byte) error {
	var tm struct{ APIVersion, Kind string }
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	r.kinds = append(r.kinds, tm.Kind)
	var target any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 DaemonSet":
		r.ds = &appsv1.DaemonSet{}
		target = r.ds
	case "v1 ServiceAccount":
		r.sa = &corev1.ServiceAccount{}
		target = r.sa
	case "v1 ConfigMap":
		r.cm = &corev1.ConfigMap{}
		target = r.cm
	case "v1 Secret":
		r.secret = &corev1.Secret{}
		target = r.secret
	case "monitoring.coreos.com/v1 PodMonitor":
		r.pm = &helmPodMonitor{}
		target = r.pm
	case "monitoring.coreos.com/v1 PrometheusRule":
		r.rule = &helmRule{}
		target = r.rule
	default:
		return fmt.Errorf("unexpected object %s %s", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, target); err != nil {
		return fmt.Errorf("%s %s does not decode strictly: %w", tm.APIVersion, tm.Kind, err)
	}
	return nil
}

// TestHelmChartDefaults: without a cluster and a store the chart refuses with a message
// that says what to set; with them (and every other value at its default) it renders a
// DaemonSet on the control-plane nodes, its ServiceAccount and config, and nothing else.
func TestHelmChartDefaults(t *testing.T) {
	if _, err := renderChart(t, nil); err == nil || !strings.Contains(err.Error(), "config.cluster is required") {
		t.Fatalf("defaults alone: want a refusal naming config.cluster, got %v", err)
	}
	for _, managed := range []string{"listen", "cacert", "endpoints"} {
		_, err := renderChart(t, map[string]any{"config": map[string]any{managed: "x"}}, "testdata/helm-minimal.yaml")
		if err == nil || !strings.Contains(err.Error(), "config."+managed+" is set by the chart") {
			t.Errorf("config.%s: want a refusal, got %v", managed, err)
		}
	}
	// values.schema.json: a misspelt key is refused, not silently ignored.
	for _, typo := range []map[string]any{{"podMonitor": map[string]any{"enable": true}}, {"metricPort": 9479}, {"metricsPort": "9479"}} {
		if _, err := renderChart(t, typo, "testdata/helm-minimal.yaml"); err == nil || !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
			t.Errorf("values %v: want a schema refusal, got %v", typo, err)
		}
	}
	r, err := renderChart(t, nil, "testdata/helm-minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(slices.Values(r.kinds)); !slices.Equal(got, []string{"ConfigMap", "DaemonSet", "ServiceAccount"}) {
		t.Fatalf("default objects: %v", got)
	}
	checkDaemonSet(t, r, 9479)
	ps := r.ds.Spec.Template.Spec
	c := ps.Containers[0]
	if len(c.Env) != 0 || slices.ContainsFunc(ps.Volumes, func(v corev1.Volume) bool { return v.Secret != nil }) {
		t.Errorf("no credentials configured, yet env %v or a Secret volume", c.Env)
	}
	if r.sa.Name != "etcdguard" || ps.ServiceAccountName != r.sa.Name || len(r.sa.Annotations) != 0 {
		t.Errorf("service account %q (pod uses %q), annotations %v", r.sa.Name, ps.ServiceAccountName, r.sa.Annotations)
	}
	cfg := checkConfig(t, r)
	if cfg["schedule"] != "0 */1 * * *" || cfg["max-age"] != "5h" || cfg["cluster"] != "prod-eu1" {
		t.Errorf("config defaults: %v", cfg)
	}
	if _, ok := cfg["s3-region"]; ok {
		t.Errorf("an empty value reached the config: %v", cfg)
	}
}

// TestHelmChartIRSAMonitoring: IRSA through the ServiceAccount annotation, the PodMonitor
// and the PrometheusRule with the labels kube-prometheus-stack selects on, custom labels,
// another port, extra env from a Secret.
func TestHelmChartIRSAMonitoring(t *testing.T) {
	r, err := renderChart(t, nil, "testdata/helm-irsa-monitoring.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(slices.Values(r.kinds)); !slices.Equal(got, []string{"ConfigMap", "DaemonSet", "PodMonitor", "PrometheusRule", "ServiceAccount"}) {
		t.Fatalf("objects: %v", got)
	}
	checkDaemonSet(t, r, 9555)
	ps := r.ds.Spec.Template.Spec
	if r.sa.Name != "etcd-backup" || ps.ServiceAccountName != "etcd-backup" ||
		r.sa.Annotations["eks.amazonaws.com/role-arn"] != "arn:aws:iam::123456789012:role/etcdguard" {
		t.Errorf("IRSA: service account %q (pod uses %q), annotations %v", r.sa.Name, ps.ServiceAccountName, r.sa.Annotations)
	}
	for what, labels := range map[string]map[string]string{"DaemonSet": r.ds.Labels, "pod": r.ds.Spec.Template.Labels, "ConfigMap": r.cm.Labels,
		"ServiceAccount": r.sa.Labels, "PodMonitor": r.pm.Metadata.Labels, "PrometheusRule": r.rule.Metadata.Labels} {
		if labels["team"] != "platform" {
			t.Errorf("%s lacks commonLabels: %v", what, labels)
		}
	}
	if r.ds.Spec.Template.Labels["tier"] != "control-plane" {
		t.Errorf("pod labels: %v", r.ds.Spec.Template.Labels)
	}
	env := ps.Containers[0].Env
	if len(env) != 1 || env[0].ValueFrom == nil || env[0].ValueFrom.SecretKeyRef == nil || env[0].ValueFrom.SecretKeyRef.Name != "etcdguard-slack" {
		t.Errorf("extraEnv: %+v", env)
	}

	pm := r.pm
	if pm.Metadata.Labels["release"] != "kube-prometheus-stack" || pm.Metadata.Namespace != "kube-system" {
		t.Errorf("PodMonitor metadata: %+v", pm.Metadata)
	}
	if !reflect.DeepEqual(pm.Spec.Selector.MatchLabels, r.ds.Spec.Selector.MatchLabels) {
		t.Errorf("PodMonitor selects %v, the pods carry %v", pm.Spec.Selector.MatchLabels, r.ds.Spec.Selector.MatchLabels)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 || pm.Spec.PodMetricsEndpoints[0].Port != "metrics" || pm.Spec.PodMetricsEndpoints[0].Interval != "15s" {
		t.Errorf("PodMonitor endpoints: %+v", pm.Spec.PodMetricsEndpoints)
	}

	if r.rule.Metadata.Labels["release"] != "kube-prometheus-stack" || r.rule.Metadata.Labels["role"] != "alert-rules" {
		t.Errorf("PrometheusRule labels: %v", r.rule.Metadata.Labels)
	}
	// The chart's rules are deploy/prometheus-rule.yaml's, whatever that file says now.
	var shipped helmRule
	b, err := os.ReadFile("prometheus-rule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &shipped); err != nil {
		t.Fatal(err)
	}
	if len(shipped.Spec.Groups) == 0 || !sameJSON(t, shipped.Spec.Groups, r.rule.Spec.Groups) {
		t.Errorf("the chart's rule groups differ from deploy/prometheus-rule.yaml's:\n%s\nvs\n%s", shipped.Spec.Groups, r.rule.Spec.Groups)
	}

	cfg := checkConfig(t, r)
	if cfg["schedule"] != "*/30 * * * *" || cfg["keep-last"] != float64(5) || cfg["s3-sse"] != "aws:kms" ||
		!reflect.DeepEqual(cfg["alert-alertmanager"], []any{"http://192.0.2.20:9093"}) {
		t.Errorf("config from values: %v", cfg)
	}
}

// TestHelmChartSecret: S3 keys in a Secret the chart writes, mounted as a shared
// credentials file; never in the pod's env or the ConfigMap.
func TestHelmChartSecret(t *testing.T) {
	r, err := renderChart(t, nil, "testdata/helm-secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(slices.Values(r.kinds)); !slices.Equal(got, []string{"ConfigMap", "DaemonSet", "Secret"}) {
		t.Fatalf("objects: %v", got)
	}
	checkDaemonSet(t, r, 9479)
	ps := r.ds.Spec.Template.Spec
	file := r.secret.StringData["credentials"]
	if r.secret.Name != "etcdguard-aws" || !strings.Contains(file, "aws_secret_access_key = s3cr3t-example-key") || !strings.Contains(file, "region = us-east-1") {
		t.Errorf("secret %q: %q", r.secret.Name, file)
	}
	if ps.ServiceAccountName != "default" {
		t.Errorf("serviceAccount.create false: pod uses %q", ps.ServiceAccountName)
	}
	checkCredentialsMount(t, ps, "etcdguard-aws")
	if strings.Count(r.objects, "s3cr3t-example-key") != 1 {
		t.Errorf("the secret key appears outside its Secret")
	}

	r, err = renderChart(t, map[string]any{"credentials": map[string]any{"create": false, "existingSecret": "my-s3-keys", "configKey": "config"}}, "testdata/helm-secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if r.secret != nil {
		t.Errorf("existingSecret: the chart wrote a Secret too")
	}
	checkCredentialsMount(t, r.ds.Spec.Template.Spec, "my-s3-keys")
	if !slices.ContainsFunc(r.ds.Spec.Template.Spec.Containers[0].Env, func(e corev1.EnvVar) bool {
		return e.Name == "AWS_CONFIG_FILE" && e.Value == "/etc/etcdguard/aws/config"
	}) {
		t.Errorf("configKey: no AWS_CONFIG_FILE in %v", r.ds.Spec.Template.Spec.Containers[0].Env)
	}
	_, err = renderChart(t, map[string]any{"credentials": map[string]any{"existingSecret": "my-s3-keys"}}, "testdata/helm-secret.yaml")
	if err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Errorf("create and existingSecret together: want a refusal, got %v", err)
	}
}

func checkCredentialsMount(t *testing.T, ps corev1.PodSpec, secret string) {
	t.Helper()
	c := ps.Containers[0]
	if !slices.ContainsFunc(ps.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == secret }) ||
		!slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/etcdguard/aws" && m.ReadOnly }) ||
		!slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "AWS_SHARED_CREDENTIALS_FILE" && e.Value == "/etc/etcdguard/aws/credentials"
		}) {
		t.Errorf("credentials from Secret %s: volumes %v, mounts %v, env %v", secret, ps.Volumes, c.VolumeMounts, c.Env)
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "AWS_SECRET") || strings.HasPrefix(e.Name, "AWS_ACCESS") {
			t.Errorf("keys in the environment: %s", e.Name)
		}
	}
}

// checkDaemonSet checks what every rendering must have: control-plane nodes only, the
// host network, only the three etcd files, the metrics port named metrics, probes on it.
func checkDaemonSet(t *testing.T, r *rendered, port int32) {
	t.Helper()
	if r.ds == nil || r.cm == nil {
		t.Fatalf("no DaemonSet or ConfigMap rendered: %v", r.kinds)
	}
	ps := r.ds.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("containers: %d", len(ps.Containers))
	}
	c := ps.Containers[0]
	sc := c.SecurityContext
	hostFiles := map[string]string{}
	for _, v := range ps.Volumes {
		if v.HostPath != nil {
			hostFiles[v.HostPath.Path] = v.Name
			if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathFile {
				t.Errorf("host path %s is not type File", v.HostPath.Path)
			}
		}
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.MountPath] = m.ReadOnly || m.MountPath == "/tmp"
	}
	checks := map[string]bool{
		"namespace kube-system": r.ds.Namespace == "kube-system",
		"selector matches the pod labels": r.ds.Spec.Selector != nil &&
			reflect.DeepEqual(r.ds.Spec.Selector.MatchLabels, subset(r.ds.Spec.Template.Labels, r.ds.Spec.Selector.MatchLabels)),
		"control-plane nodeSelector": ps.NodeSelector["node-role.kubernetes.io/control-plane"] == "",
		"control-plane toleration": slices.ContainsFunc(ps.Tolerations, func(tl corev1.Toleration) bool {
			return tl.Key == "node-role.kubernetes.io/control-plane" && tl.Operator == corev1.TolerationOpExists && tl.Effect == corev1.TaintEffectNoSchedule
		}),
		"hostNetwork":                         ps.HostNetwork,
		"node's DNS, not cluster DNS":         ps.DNSPolicy == corev1.DNSDefault,
		"system-node-critical":                ps.PriorityClassName == "system-node-critical",
		"no API token":                        ps.AutomountServiceAccountToken != nil && !*ps.AutomountServiceAccountToken,
		"only the three etcd files from host": len(hostFiles) == 3 && hostFiles["/etc/kubernetes/pki/etcd/ca.crt"] != "" && hostFiles["/etc/kubernetes/pki/etcd/healthcheck-client.crt"] != "" && hostFiles["/etc/kubernetes/pki/etcd/healthcheck-client.key"] != "",
		"etcd files mounted read-only": mounted["/etc/kubernetes/pki/etcd/ca.crt"] && mounted["/etc/kubernetes/pki/etcd/healthcheck-client.crt"] &&
			mounted["/etc/kubernetes/pki/etcd/healthcheck-client.key"] && !mounted["/etc/kubernetes/pki/etcd"],
		"config mounted read-only":        mounted["/etc/etcdguard/config"],
		"runs the daemon with the config": slices.Equal(c.Command, []string{"/etcdguard", "daemon", "--config", "/etc/etcdguard/config/config.yaml"}),
		"metrics port":                    len(c.Ports) == 1 && c.Ports[0].Name == "metrics" && c.Ports[0].ContainerPort == port && c.Ports[0].HostPort == 0,
		"liveness on /healthz at metrics": c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/healthz" &&
			c.LivenessProbe.HTTPGet.Port.StrVal == "metrics" && c.LivenessProbe.HTTPGet.Host == "",
		"readiness on /readyz at metrics": c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == "/readyz" &&
			c.ReadinessProbe.HTTPGet.Port.StrVal == "metrics",
		"memory request and limit":   !c.Resources.Requests.Memory().IsZero() && !c.Resources.Limits.Memory().IsZero(),
		"read-only root filesystem":  sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
		"no privilege escalation":    sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		"all capabilities dropped":   sc != nil && sc.Capabilities != nil && slices.Contains(sc.Capabilities.Drop, "ALL"),
		"config checksum on the pod": len(r.ds.Spec.Template.Annotations["checksum/config"]) == 64,
		"image has a tag":            strings.Contains(c.Image, ":") && !strings.HasSuffix(c.Image, ":"),
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("DaemonSet: %s", what)
		}
	}
	if t.Failed() {
		b, _ := json.MarshalIndent(r.ds, "", "  ")
		t.Logf("%s", b)
	}
}

func subset(m, keys map[string]string) map[string]string {
	out := map[string]string{}
	for k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

// checkConfig decodes the rendered config file and checks the keys the chart manages:
// the local member, the three files the pod mounts, and the port it advertises.
func checkConfig(t *testing.T, r *rendered) map[string]any {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(r.cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	c := r.ds.Spec.Template.Spec.Containers[0]
	mounted := func(path any) bool {
		s, _ := path.(string)
		return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == s })
	}
	if !mounted(cfg["cacert"]) || !mounted(cfg["cert"]) || !mounted(cfg["key"]) {
		t.Errorf("config's etcd files are not where the pod mounts them: %v %v %v", cfg["cacert"], cfg["cert"], cfg["key"])
	}
	if want := fmt.Sprintf("0.0.0.0:%d", c.Ports[0].ContainerPort); cfg["listen"] != want {
		t.Errorf("config listens on %v, the pod advertises %s", cfg["listen"], want)
	}
	if !reflect.DeepEqual(cfg["endpoints"], []any{"https://127.0.0.1:2379"}) {
		t.Errorf("endpoints: %v", cfg["endpoints"])
	}
	for k := range cfg {
		if strings.Contains(strings.ToLower(k), "secret") || k == "password" {
			t.Errorf("a secret in the ConfigMap: %s", k)
		}
	}
	return cfg
}

func sameJSON(t *testing.T, a, b any) bool {
	t.Helper()
	norm := func(v any) []byte {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var x any
		if err := json.Unmarshal(raw, &x); err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal(x)
		return out
	}
	return bytes.Equal(norm(a), norm(b))
}
