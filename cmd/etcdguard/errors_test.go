package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// Bad input gets one line that says what happened and what to do, a non-zero exit, and
// leaves nothing behind; secrets never appear.
func TestCLIErrors(t *testing.T) {
	const secret = "S3cr3t-Passw0rd"
	e := testharness.StartEtcd(t)
	authed := testharness.StartEtcd(t)
	enableAuth(t, authed.Client(t), secret)
	fake := testharness.StartFakeS3(t)
	storeDir := t.TempDir()
	fileStore := "file://" + storeDir

	// One good snapshot, for the unknown-id case.
	ok := run(t, []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_STORE=" + fileStore, "ETCDGUARD_CLUSTER=c1"}, "snapshot", "save")
	if ok.code != 0 {
		t.Fatalf("save: %s", ok.stderr)
	}

	tests := []struct {
		name string
		env  []string
		args []string
		want []string // substrings of the error line
	}{
		{name: "unreachable etcd", args: []string{"snapshot", "save", "--endpoints", "127.0.0.1:1", "--dial-timeout", "500ms", "--store", fileStore},
			want: []string{"127.0.0.1:1", "unreachable within 500ms", "connection refused", "check --endpoints"}},
		{name: "wrong password", env: []string{"ETCDCTL_USER=root", "ETCDCTL_PASSWORD=wrong-" + secret},
			args: []string{"snapshot", "save", "--endpoints", authed.Endpoints[0], "--store", fileStore},
			want: []string{"refused the credentials of user \"root\"", "check --user and --password"}},
		{name: "auth required", args: []string{"snapshot", "save", "--endpoints", authed.Endpoints[0], "--store", fileStore},
			want: []string{authed.Endpoints[0]}},
		{name: "malformed store URL", args: []string{"snapshot", "list", "--store", "s3//bucket"},
			want: []string{"malformed --store", "s3://BUCKET"}},
		{name: "unknown store scheme", args: []string{"snapshot", "list", "--store", "gs://bucket"},
			want: []string{`unsupported --store scheme "gs"`}},
		{name: "no store", args: []string{"snapshot", "list"}, want: []string{"no store given", "--store"}},
		{name: "missing bucket", env: fake.Env(), args: []string{"snapshot", "list", "--store", "s3://no-such-bucket"},
			want: []string{"no-such-bucket", "does not exist", "create it"}},
		{name: "credentials file missing", env: append(fake.Env()[2:], "AWS_SHARED_CREDENTIALS_FILE=/nonexistent/credentials"),
			args: []string{"snapshot", "list", "--store", fake.URL("")},
			want: []string{"no AWS credentials", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent/credentials does not exist"}},
		{name: "unknown snapshot id", args: []string{"snapshot", "verify", "20200101T000000Z-000000", "--store", fileStore},
			want: []string{"not found in cluster c1", "nearest:", "etcdguard snapshot list"}},
		{name: "unknown flag, etcdctl habit", args: []string{"snapshot", "save", "-r"},
			want: []string{"unknown shorthand flag: 'r'", "etcdguard snapshot save --help"}},
		{name: "bad compression", args: []string{"snapshot", "save", "--compression", "lz4", "--endpoints", e.Endpoints[0], "--store", fileStore},
			want: []string{`unknown --compression "lz4"`, "zstd, gzip or none"}},
		{name: "verify needs an id", args: []string{"snapshot", "verify"}, want: []string{"accepts 1 arg"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := tree(t, storeDir)
			r := run(t, tc.env, tc.args...)
			if r.code == 0 {
				t.Fatalf("exit 0, want failure; stdout %q", r.stdout)
			}
			line := r.errorLine(t)
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("error line %q does not mention %q", line, w)
				}
			}
			if strings.Contains(r.stdout+r.stderr, secret) {
				t.Errorf("the password appears in the output: %q", r.stderr)
			}
			if after := tree(t, storeDir); after != before {
				t.Errorf("the store changed:\n%s\nbecame\n%s", before, after)
			}
		})
	}
}

func TestPasswordFlagWarns(t *testing.T) {
	tests := []struct {
		name string
		args []string
		warn bool
	}{
		{"--password", []string{"--password", "hunter2"}, true},
		{"--user name:password", []string{"--user", "root:hunter2"}, true},
		{"--user name", []string{"--user", "root"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, nil, append([]string{"snapshot", "list", "--store", "file://" + t.TempDir()}, tc.args...)...)
			if strings.Contains(r.stderr, "visible in process listings") != tc.warn || strings.Contains(r.stderr, "hunter2") {
				t.Errorf("stderr %q: want a warning (%v) without the password", r.stderr, tc.warn)
			}
		})
	}
}

func enableAuth(t *testing.T, cli *clientv3.Client, password string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cli.UserAdd(ctx, "root", password); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
}

// tree lists every file under dir, hidden ones included, so a test sees any leftover.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, strings.TrimPrefix(p, dir))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "\n")
}

// etcd in Kubernetes always speaks TLS with client certificates: the etcdctl flags work,
// and each mistake is named.
func TestTLS(t *testing.T) {
	pki := testharness.GenerateTLS(t)
	e := testharness.StartEtcd(t, testharness.WithClientTLS(pki))
	other := testharness.GenerateTLS(t) // a CA that did not sign etcd's certificate
	store := "file://" + t.TempDir()
	tests := []struct {
		name string
		env  []string
		args []string
		want string // empty: success
	}{
		{name: "etcdctl env names", env: []string{"ETCDCTL_CACERT=" + pki.CACert, "ETCDCTL_CERT=" + pki.ClientCert, "ETCDCTL_KEY=" + pki.ClientKey}},
		{name: "flags", args: []string{"--cacert", pki.CACert, "--cert", pki.ClientCert, "--key", pki.ClientKey}},
		{name: "wrong CA", args: []string{"--cacert", other.CACert, "--cert", pki.ClientCert, "--key", pki.ClientKey}, want: "TLS handshake failed (tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{name: "no client certificate", args: []string{"--cacert", pki.CACert}, want: "check --cacert, --cert and --key"},
		{name: "cert without key", args: []string{"--cacert", pki.CACert, "--cert", pki.ClientCert}, want: "--cert and --key must be given together"},
		{name: "missing CA file", args: []string{"--cacert", "/nonexistent/ca.crt", "--cert", pki.ClientCert, "--key", pki.ClientKey}, want: "loading TLS files"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"snapshot", "save", "--endpoints", e.Endpoints[0], "--store", store, "--dial-timeout", "2s"}, tc.args...)
			r := run(t, tc.env, args...)
			if tc.want == "" {
				if r.code != 0 {
					t.Fatalf("save over TLS failed: %s", r.stderr)
				}
				return
			}
			if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, tc.want) {
				t.Fatalf("exit %d, error %q; want it to mention %q", r.code, line, tc.want)
			}
		})
	}
}

// One member down, listed first, never stops a command while another answers; only when
// none does is it "etcd unreachable" (exit 12).
func TestFirstEndpointDown(t *testing.T) {
	e := testharness.StartEtcd(t)
	dead := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	env := []string{"ETCDGUARD_STORE=file://" + t.TempDir(), "ETCDGUARD_CLUSTER=c1"}
	if r := run(t, env, "del", "/x/", "--prefix", "--dry-run", "--dial-timeout", "1s", "--endpoints", dead+","+e.Endpoints[0]); r.code != 0 {
		t.Fatalf("del --dry-run with the first endpoint down: exit %d, %s", r.code, r.stderr)
	}
	// A hung member accepts connections and never answers: over TLS its handshake times
	// out, which looks like a TLS problem; the next member must still be tried.
	pki := testharness.GenerateTLS(t)
	secure := testharness.StartEtcd(t, testharness.WithClientTLS(pki))
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	if r := run(t, env, "del", "/x/", "--prefix", "--dry-run", "--dial-timeout", "1s", "--cacert", pki.CACert, "--cert", pki.ClientCert, "--key", pki.ClientKey,
		"--endpoints", "https://"+hung.Addr().String()+","+secure.Endpoints[0]); r.code != 0 {
		t.Fatalf("del --dry-run with the first endpoint hung: exit %d, %s", r.code, r.stderr)
	}
	// Hung alone: unreachable (12), not a certificate problem.
	r := run(t, env, "del", "/x/", "--prefix", "--dry-run", "--dial-timeout", "1s", "--cacert", pki.CACert, "--cert", pki.ClientCert, "--key", pki.ClientKey,
		"--endpoints", "https://"+hung.Addr().String())
	if line := r.errorLine(t); r.code != 12 || !strings.Contains(line, "does not answer") {
		t.Fatalf("only a hung endpoint: exit %d, %q; want 12 saying it does not answer", r.code, line)
	}
	r = run(t, env, "del", "/x/", "--prefix", "--dry-run", "--dial-timeout", "1s", "--endpoints", dead)
	if line := r.errorLine(t); r.code != 12 || !strings.Contains(line, dead) {
		t.Fatalf("all endpoints down: exit %d, %q; want 12 naming %s", r.code, line, dead)
	}
}
