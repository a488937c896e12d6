package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func TestStaticPod(t *testing.T) {
	b, err := os.ReadFile("static-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		t.Fatalf("static-pod.yaml does not decode strictly into a v1 Pod: %v", err)
	}
	c := pod.Spec.Containers[0]
	sc := c.SecurityContext
	checks := map[string]bool{
		"kind Pod in kube-system":         pod.Kind == "Pod" && pod.Namespace == "kube-system",
		"hostNetwork":                     pod.Spec.HostNetwork,
		"system-node-critical":            pod.Spec.PriorityClassName == "system-node-critical",
		"read-only root filesystem":       sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
		"no privilege escalation":         sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		"all capabilities dropped":        sc != nil && sc.Capabilities != nil && slices.Contains(sc.Capabilities.Drop, "ALL"),
		"liveness on /healthz":            c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/healthz",
		"readiness on /readyz":            c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == "/readyz",
		"memory request and limit":        !c.Resources.Requests.Memory().IsZero() && !c.Resources.Limits.Memory().IsZero(),
		"runs the daemon with the config": slices.Equal(c.Command[1:], []string{"daemon", "--config", "/etc/etcdguard/config.yaml"}),
		"cluster DNS not needed":          pod.Spec.DNSPolicy == corev1.DNSDefault,
		"only the etcd CA, client cert and key": slices.Equal(etcdMounts(pod), []string{
			"/etc/kubernetes/pki/etcd/ca.crt", "/etc/kubernetes/pki/etcd/healthcheck-client.crt", "/etc/kubernetes/pki/etcd/healthcheck-client.key"}),
		"S3 credentials from the mounted config dir": envValue(c, "AWS_SHARED_CREDENTIALS_FILE") == "/etc/etcdguard/aws/credentials" &&
			envValue(c, "AWS_CONFIG_FILE") == "/etc/etcdguard/aws/config" &&
			slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/etcdguard" && m.ReadOnly }),
		"no secret in the manifest's env": !strings.Contains(strings.ToLower(string(b)), "secret_access_key") && !strings.Contains(string(b), "password"),
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("static pod: %s", what)
		}
	}
}

// etcdMounts lists what the pod mounts from the host's etcd PKI, each of which must be
// a read-only mount of that very host file.
func etcdMounts(pod corev1.Pod) []string {
	var out []string
	for _, m := range pod.Spec.Containers[0].VolumeMounts {
		i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 || pod.Spec.Volumes[i].HostPath == nil || !strings.HasPrefix(pod.Spec.Volumes[i].HostPath.Path+"/", "/etc/kubernetes/") {
			continue
		}
		hp := pod.Spec.Volumes[i].HostPath
		if hp.Path != m.MountPath || !m.ReadOnly || hp.Type == nil || *hp.Type != corev1.HostPathFile {
			out = append(out, "not a read-only File mount of itself: "+hp.Path)
			continue
		}
		out = append(out, m.MountPath)
	}
	slices.Sort(out)
	return out
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func decodeStrictJSON(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func TestIAMPolicy(t *testing.T) {
	var p struct {
		Version   string
		Statement []struct {
			Sid, Effect string
			Action      []string
			Resource    string
		}
	}
	decodeStrictJSON(t, "iam-policy.json", &p)
	granted := map[string]string{}
	for _, s := range p.Statement {
		if s.Effect != "Allow" || strings.Contains(s.Resource, "*") && !strings.HasSuffix(s.Resource, "/etcd/*") {
			t.Errorf("statement %s: %s on %s is broader than the backup prefix", s.Sid, s.Effect, s.Resource)
		}
		for _, a := range s.Action {
			if strings.Contains(a, "*") {
				t.Errorf("wildcard action %s", a)
			}
			granted[a] = s.Resource
		}
	}
	// What the S3 backend calls: HeadBucket and listings, objects, multipart clean-up.
	for _, a := range []string{"s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"} {
		if _, ok := granted[a]; !ok {
			t.Errorf("the policy lacks %s", a)
		}
	}
}

func TestLifecycleRule(t *testing.T) {
	var l struct {
		Rules []struct {
			ID, Status                     string
			Filter                         struct{ Prefix string }
			AbortIncompleteMultipartUpload *struct{ DaysAfterInitiation int }
			NoncurrentVersionExpiration    *struct{ NoncurrentDays int }
			Expiration                     *struct{ ExpiredObjectDeleteMarker bool }
		}
	}
	decodeStrictJSON(t, "s3-lifecycle.json", &l)
	if len(l.Rules) != 2 {
		t.Fatalf("lifecycle rules: %+v", l)
	}
	for _, r := range l.Rules {
		if r.Status != "Enabled" || r.Filter.Prefix != "etcd/" {
			t.Errorf("rule %s: %+v", r.ID, r)
		}
	}
	if a := l.Rules[0].AbortIncompleteMultipartUpload; a == nil || a.DaysAfterInitiation < 1 {
		t.Errorf("no rule aborts incomplete uploads: %+v", l.Rules[0])
	}
	// With versioning (Object Lock needs it), a prune's delete leaves the data as a noncurrent
	// version; it must outlive the lock a daemon gives (security.md uses 7d) and then go.
	if n := l.Rules[1].NoncurrentVersionExpiration; n == nil || n.NoncurrentDays < 7 || l.Rules[1].Expiration == nil || !l.Rules[1].Expiration.ExpiredObjectDeleteMarker {
		t.Errorf("no rule expires noncurrent versions after the lock: %+v", l.Rules[1])
	}
}

func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("etcdguard.service")
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]map[string]string{}
	var cur string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			cur = strings.Trim(line, "[]")
			sections[cur] = map[string]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || cur == "" {
				t.Fatalf("line %d is not key=value in a section: %q", i+1, line)
			}
			sections[cur][k] = v
		}
	}
	svc := sections["Service"]
	if !strings.HasPrefix(svc["ExecStart"], "/usr/local/bin/etcdguard daemon ") || svc["Restart"] != "always" ||
		svc["NoNewPrivileges"] != "yes" || sections["Install"]["WantedBy"] != "multi-user.target" {
		t.Fatalf("unit: %v", sections)
	}
}
