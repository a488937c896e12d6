package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// Skipping verification of etcd's certificate is the operator's explicit choice: without
// --cacert the save fails naming both ways out, and with the flag it works and warns once.
func TestInsecureSkipTLSVerify(t *testing.T) {
	pki := testharness.GenerateKubeadmPKI(t)
	e := testharness.StartEtcd(t, testharness.WithClientTLS(&pki.TLSFiles))
	other := testharness.GenerateTLS(t)
	clientCert := []string{"--cert", pki.ClientCert, "--key", pki.ClientKey}
	tests := []struct {
		name string
		env  []string
		args []string
		want []string // substrings of the error line; none: success
	}{
		{name: "no --cacert", args: clientCert,
			want: []string{e.Endpoints[0], "x509: certificate signed by unknown authority", "--cacert", "--insecure-skip-tls-verify"}},
		{name: "ETCDCTL_INSECURE_SKIP_TLS_VERIFY=false", env: []string{"ETCDCTL_INSECURE_SKIP_TLS_VERIFY=false"}, args: clientCert,
			want: []string{"unknown authority", "--insecure-skip-tls-verify"}},
		{name: "not implied by a wrong --cacert", args: append([]string{"--cacert", other.CACert}, clientCert...),
			want: []string{"unknown authority", "--cacert"}},
		{name: "--insecure-skip-tls-verify", args: append([]string{"--insecure-skip-tls-verify"}, clientCert...)},
		{name: "ETCDCTL_INSECURE_SKIP_TLS_VERIFY=true", env: []string{"ETCDCTL_INSECURE_SKIP_TLS_VERIFY=true"}, args: clientCert},
		{name: "with a wrong --cacert", args: append([]string{"--insecure-skip-tls-verify", "--cacert", other.CACert}, clientCert...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"snapshot", "save", "--endpoints", e.Endpoints[0], "--store", "file://" + t.TempDir(), "--dial-timeout", testharness.Budget(2 * time.Second).String()}, tc.args...)
			r := run(t, tc.env, args...)
			warnings := strings.Count(r.stderr, "--insecure-skip-tls-verify: etcd's certificate is not verified")
			if tc.want == nil {
				if r.code != 0 {
					t.Fatalf("exit %d: %s", r.code, r.stderr)
				}
				if warnings != 1 {
					t.Errorf("want the risk named once on stderr, got %d times: %q", warnings, r.stderr)
				}
				return
			}
			line := r.errorLine(t)
			if r.code != 1 {
				t.Errorf("exit %d, want 1 (etcd answered: not unreachable)", r.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("error line %q does not mention %q", line, w)
				}
			}
			if warnings != 0 {
				t.Errorf("warned about skipping verification without the flag: %q", r.stderr)
			}
		})
	}
}

// etcd as kubeadm runs it (client certificates required) with RBAC enabled: the client
// certificate's CN is the etcd user unless --user is given. Each refusal is one line that
// names the user and the grant it lacks, nothing is half done, and no password is echoed.
func TestEtcdRBAC(t *testing.T) {
	const (
		rootPass   = "R00t-S3cret"
		writerPass = "Wr1ter-S3cret"
		wrongPass  = "N0t-The-Passw0rd"
	)
	pki := testharness.GenerateKubeadmPKI(t)
	e := testharness.StartEtcd(t, testharness.WithClientTLS(&pki.TLSFiles))
	// A read-only user's certificate, next to kubeadm's in pki/etcd.
	readerCert, readerKey := pki.IssueClientCert(t, filepath.Join(pki.Dir, "etcd"), "pods-reader", "pods-reader")
	writerCert, writerKey := pki.IssueClientCert(t, filepath.Join(pki.Dir, "etcd"), "pods-writer", "pods-writer")

	cli := tlsClient(t, e.Endpoints, pki.CACert, pki.ClientCert, pki.ClientKey)
	ctx := context.Background()
	for _, k := range []string{"/registry/pods/default/a", "/registry/pods/default/b", "/registry/secrets/default/s"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cli.RoleAdd(ctx, "pods-read"))
	must(cli.RoleGrantPermission(ctx, "pods-read", "/registry/pods/", clientv3.GetPrefixRangeEnd("/registry/pods/"), clientv3.PermissionType(clientv3.PermRead)))
	must(cli.RoleAdd(ctx, "pods-readwrite"))
	must(cli.RoleGrantPermission(ctx, "pods-readwrite", "/registry/pods/", clientv3.GetPrefixRangeEnd("/registry/pods/"), clientv3.PermissionType(clientv3.PermReadWrite)))
	// A confirm records its delete under /etcdguard/<cluster>/guard/ (guard.RecordPrefix).
	must(cli.RoleGrantPermission(ctx, "pods-read", "/etcdguard/", clientv3.GetPrefixRangeEnd("/etcdguard/"), clientv3.PermissionType(clientv3.PermRead)))
	must(cli.RoleGrantPermission(ctx, "pods-readwrite", "/etcdguard/", clientv3.GetPrefixRangeEnd("/etcdguard/"), clientv3.PermissionType(clientv3.PermReadWrite)))
	noPassword := &clientv3.UserAddOptions{NoPassword: true} // certificate users
	must(cli.UserAdd(ctx, "root", rootPass))
	must(cli.UserGrantRole(ctx, "root", "root"))
	must(cli.UserAddWithOptions(ctx, testharness.KubeadmHealthcheckCN, "", noPassword))
	must(cli.UserGrantRole(ctx, testharness.KubeadmHealthcheckCN, "root"))
	must(cli.UserAddWithOptions(ctx, "pods-reader", "", noPassword))
	must(cli.UserGrantRole(ctx, "pods-reader", "pods-read"))
	must(cli.UserAddWithOptions(ctx, "pods-writer", "", noPassword))
	must(cli.UserGrantRole(ctx, "pods-writer", "pods-readwrite"))
	must(cli.UserAdd(ctx, "writer", writerPass))
	must(cli.UserGrantRole(ctx, "writer", "pods-readwrite"))
	must(cli.AuthEnable(ctx))

	storeDir := t.TempDir()
	store := "file://" + storeDir
	base := []string{"--store", store, "--cacert", pki.CACert, "--dial-timeout", testharness.Budget(2 * time.Second).String()}
	certOf := func(cert, key string) []string { return []string{"--cert", cert, "--key", key} }
	reader, writer := certOf(readerCert, readerKey), certOf(writerCert, writerKey)
	// Password users still need a client certificate to pass the TLS handshake; the
	// API server's has a CN that is no etcd user, so only the password can let them in.
	apiserver := certOf(pki.APIServerCert, pki.APIServerKey)
	stranger := testharness.GenerateTLS(t)
	call := func(t *testing.T, env []string, args ...string) result {
		t.Helper()
		return run(t, env, append(args, append(base, "--endpoints", e.Endpoints[0])...)...)
	}
	noSecrets := func(t *testing.T, r result) {
		t.Helper()
		for _, s := range []string{rootPass, writerPass, wrongPass} {
			if strings.Contains(r.stdout+r.stderr, s) {
				t.Errorf("a password appears in the output: stdout %q stderr %q", r.stdout, r.stderr)
			}
		}
	}

	t.Run("snapshot save", func(t *testing.T) {
		tests := []struct {
			name     string
			endpoint string // default: the etcd's
			env      []string
			args     []string
			code     int
			want     []string // substrings of the error line
		}{
			{name: "root by certificate CN (kubeadm healthcheck-client)", args: pki.EtcdctlArgs()[2:]},
			{name: "--user name:password", args: append([]string{"--user", "root:" + rootPass}, apiserver...)},
			{name: "--user name --password", args: append([]string{"--user", "root", "--password", rootPass}, apiserver...)},
			{name: "ETCDCTL_USER and ETCDCTL_PASSWORD", env: []string{"ETCDCTL_USER=root", "ETCDCTL_PASSWORD=" + rootPass}, args: apiserver},
			{name: "ETCDCTL_USER=name:password", env: []string{"ETCDCTL_USER=root:" + rootPass}, args: apiserver},
			{name: "read-only certificate", args: reader, code: 1,
				want: []string{`etcd refused the snapshot: etcd user "pods-reader" (the CN of --cert) lacks the permission`, "root role", "etcdserver: permission denied"}},
			{name: "password user without root", env: []string{"ETCDCTL_USER=writer", "ETCDCTL_PASSWORD=" + writerPass}, args: apiserver, code: 1,
				want: []string{`etcd user "writer" (--user) lacks the permission`, "root role", "etcdserver: permission denied"}},
			{name: "wrong password", env: []string{"ETCDCTL_USER=root", "ETCDCTL_PASSWORD=" + wrongPass}, args: apiserver, code: 1,
				want: []string{`refused the credentials of user "root"`, "check --user and --password"}},
			{name: "wrong password in --user", args: append([]string{"--user", "root:" + wrongPass}, apiserver...), code: 1,
				want: []string{`refused the credentials of user "root"`}},
			{name: "certificate CN that is no etcd user", args: apiserver, code: 1,
				want: []string{`etcd user "kube-apiserver-etcd-client" (the CN of --cert) does not exist in etcd`, "etcdserver: user name not found"}},
			{name: "client certificate of another CA", args: certOf(stranger.ClientCert, stranger.ClientKey), code: 1,
				want: []string{e.Endpoints[0], "remote error: tls: unknown certificate authority", "etcd does not accept the client certificate"}},
			{name: "unreachable", endpoint: "127.0.0.1:1", args: reader, code: exitUnreachable,
				want: []string{"127.0.0.1:1", "connection refused"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := tree(t, storeDir)
				ep := e.Endpoints[0]
				if tc.endpoint != "" {
					ep = tc.endpoint
				}
				r := run(t, tc.env, append(append([]string{"snapshot", "save", "--endpoints", ep}, base...), tc.args...)...)
				noSecrets(t, r)
				if r.code != tc.code {
					t.Fatalf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
				}
				if tc.code == 0 {
					if !strings.Contains(r.stdout, "sha256:") {
						t.Errorf("no manifest printed: %q", r.stdout)
					}
					return
				}
				line := r.errorLine(t)
				t.Log(line)
				for _, w := range tc.want {
					if !strings.Contains(line, w) {
						t.Errorf("error line %q does not mention %q", line, w)
					}
				}
				if after := tree(t, storeDir); after != before {
					t.Errorf("a refused save changed the store:\n%s\nbecame\n%s", before, after)
				}
			})
		}
	})

	t.Run("guarded delete", func(t *testing.T) {
		planOf := func(t *testing.T, r result) string {
			t.Helper()
			var p struct {
				PlanID   string `json:"plan_id"`
				KeyCount int    `json:"key_count"`
			}
			if r.code != 0 {
				t.Fatalf("dry-run: exit %d: %s", r.code, r.stderr)
			}
			if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || p.KeyCount != 2 {
				t.Fatalf("plan %q: %v, want 2 keys", r.stdout, err)
			}
			return p.PlanID
		}
		stateOf := func(t *testing.T, id string) string {
			t.Helper()
			r := call(t, nil, append([]string{"guard", "plans", "-o", "json"}, reader...)...)
			var plans []struct {
				PlanID string `json:"plan_id"`
				State  string `json:"state"`
			}
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &plans) != nil {
				t.Fatalf("guard plans: exit %d %q %q", r.code, r.stdout, r.stderr)
			}
			for _, p := range plans {
				if p.PlanID == id {
					return p.State
				}
			}
			t.Fatalf("plan %s not listed: %s", id, r.stdout)
			return ""
		}
		podKeys := func(t *testing.T) int64 {
			t.Helper()
			resp, err := cli.Get(ctx, "/registry/pods/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			return resp.Count
		}

		// A user who may not read the range cannot even plan.
		r := call(t, []string{"ETCDCTL_USER=root", "ETCDCTL_PASSWORD=" + wrongPass}, append([]string{"del", "/registry/secrets/", "--prefix", "--dry-run"}, apiserver...)...)
		noSecrets(t, r)
		if r.code != 1 || !strings.Contains(r.errorLine(t), `refused the credentials of user "root"`) {
			t.Errorf("dry-run with a wrong password: exit %d %q", r.code, r.stderr)
		}
		r = call(t, nil, append([]string{"del", "/registry/secrets/", "--prefix", "--dry-run"}, reader...)...)
		if line := r.errorLine(t); r.code != 1 || !strings.Contains(line, `etcd user "pods-reader" (the CN of --cert) lacks the permission: planning needs a role with read permission`) {
			t.Errorf("dry-run on an unreadable range: exit %d %q", r.code, line)
		}

		// The read-only user plans; its confirm is refused by etcd and deletes nothing.
		id := planOf(t, call(t, nil, append([]string{"del", "/registry/pods/", "--prefix", "--dry-run", "-o", "json"}, reader...)...))
		r = call(t, nil, append([]string{"del", "--confirm", id}, reader...)...)
		line := r.errorLine(t)
		t.Log(line)
		if r.code != 1 {
			t.Errorf("confirm without write permission: exit %d, want 1", r.code)
		}
		for _, w := range []string{`etcd refused the delete of ["/registry/pods/", "/registry/pods0")`, `etcd user "pods-reader" (the CN of --cert) lacks the permission`,
			"readwrite permission on the range and on /etcdguard/", "etcdserver: permission denied", "the plan can be confirmed again"} {
			if !strings.Contains(line, w) {
				t.Errorf("error line %q does not mention %q", line, w)
			}
		}
		if n := podKeys(t); n != 2 {
			t.Fatalf("a refused confirm left %d of 2 keys", n)
		}
		if s := stateOf(t, id); s != "planned" {
			t.Errorf("after the refused confirm the plan is %s, want planned (no saved copy left behind)", s)
		}
		if saved := strings.Count(tree(t, storeDir), "/guard/deleted/"); saved != 0 {
			t.Errorf("the refused confirm left a saved copy:\n%s", tree(t, storeDir))
		}

		// The same plan, confirmed with the rights, deletes exactly the range; undo works too.
		r = call(t, nil, append([]string{"del", "--confirm", id}, writer...)...)
		if r.code != 0 || !strings.Contains(r.stdout, "deleted 2 keys") {
			t.Fatalf("confirm with readwrite: exit %d %q %q", r.code, r.stdout, r.stderr)
		}
		if n := podKeys(t); n != 0 {
			t.Errorf("%d pod keys left after the confirm", n)
		}
		if s := stateOf(t, id); s != "executed" {
			t.Errorf("plan is %s, want executed", s)
		}
		r = call(t, nil, append([]string{"guard", "undo", id}, reader...)...)
		if line := r.errorLine(t); r.code != 1 || !strings.Contains(line, "an undo needs a role with readwrite permission") {
			t.Errorf("undo without write permission: exit %d %q", r.code, line)
		}
		r = call(t, []string{"ETCDCTL_USER=writer", "ETCDCTL_PASSWORD=" + writerPass}, append([]string{"guard", "undo", id}, apiserver...)...)
		noSecrets(t, r)
		if r.code != 0 || podKeys(t) != 2 {
			t.Errorf("undo by a password user with readwrite: exit %d %q, %d keys back", r.code, r.stderr, podKeys(t))
		}
		resp, err := cli.Get(ctx, "/registry/secrets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 1 {
			t.Errorf("a key outside the range changed: %v, %v", resp, err)
		}
	})
}

// tlsClient is a client authenticated by a client certificate only.
func tlsClient(t *testing.T, endpoints []string, ca, cert, key string) *clientv3.Client {
	t.Helper()
	tc, err := transport.TLSInfo{TrustedCAFile: ca, CertFile: cert, KeyFile: key}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
