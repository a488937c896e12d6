package guard

import "strings"

// resource splits a Kubernetes key, /registry[-X]/<type>/[<ns>/]<name>, into its resource
// type and namespace. CRDs are stored as /registry/<group>/<type>/..., and services as
// /registry/services/specs|endpoints/...; both count as a two-part type.
func resource(key string) (typ, ns string, ok bool) {
	rest, found := strings.CutPrefix(key, "/registry")
	if !found {
		return "", "", false
	}
	if i := strings.IndexByte(rest, '/'); i > 0 && rest[0] == '-' {
		rest = rest[i:] // /registry-kube-1/...
	}
	parts := strings.Split(strings.TrimPrefix(rest, "/"), "/")
	if len(parts) < 2 || parts[0] == "" || !strings.HasPrefix(rest, "/") {
		return "", "", false
	}
	typ, parts = parts[0], parts[1:]
	if (strings.Contains(typ, ".") || typ == "services") && len(parts) >= 2 {
		typ, parts = typ+"/"+parts[0], parts[1:]
	}
	if len(parts) == 2 {
		ns = parts[0]
	}
	return typ, ns, true
}

// bootCritical are keys etcdguard itself or Kubernetes needs to start: deleting them
// breaks the control plane, not just a workload.
var bootCritical = []string{
	"/namespaces/kube-system", "/namespaces/default", "/namespaces/kube-public", "/namespaces/kube-node-lease",
	"/apiregistration.k8s.io/", "/ranges/", "/clusterroles/system:", "/clusterrolebindings/system:",
	"/priorityclasses/system-", "/services/specs/default/kubernetes", "/services/endpoints/default/kubernetes",
	"/roles/kube-system/", "/rolebindings/kube-system/",
}

// critical says why key is boot-critical, or "" if it is not.
func critical(key string) string {
	if strings.HasPrefix(key, "/etcdguard/") {
		return "etcdguard's own leader election and delete records"
	}
	rest, found := strings.CutPrefix(key, "/registry")
	if !found {
		return ""
	}
	if i := strings.IndexByte(rest, '/'); i > 0 && rest[0] == '-' {
		rest = rest[i:]
	}
	for _, c := range bootCritical {
		if strings.HasPrefix(rest, c) {
			return "Kubernetes needs " + strings.TrimSuffix(c, "/") + " to run"
		}
	}
	return ""
}
