package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSettingPrecedence(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "etcdguard.yaml")
	if err := os.WriteFile(cfg, []byte("endpoints: [https://cfg-1:2379, https://cfg-2:2379]\nstore: file:///from-config\ncluster: cfgcluster\nschedul: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	goodCfg := filepath.Join(t.TempDir(), "good.yaml")
	if err := os.WriteFile(goodCfg, []byte("endpoints: [https://cfg-1:2379, https://cfg-2:2379]\nstore: file:///from-config\ncluster: cfgcluster\ns3-part-size: 32MiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	versionCfg := filepath.Join(t.TempDir(), "version.yaml")
	if err := os.WriteFile(versionCfg, []byte("store: file:///from-config\nversion: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A missing space after a key's colon folds the value into the key: that key is not quoted.
	foldedCfg := filepath.Join(t.TempDir(), "folded.yaml")
	if err := os.WriteFile(foldedCfg, []byte("store: file:///from-config\npassword:hunter2: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		env       map[string]string
		args      []string
		endpoints []string
		store     string
		cluster   string
		wantErr   string
	}{
		{name: "defaults", endpoints: []string{"127.0.0.1:2379"}},
		{name: "config file", args: []string{"--config", goodCfg},
			endpoints: []string{"https://cfg-1:2379", "https://cfg-2:2379"}, store: "file:///from-config", cluster: "cfgcluster"},
		{name: "config file from env", env: map[string]string{"ETCDGUARD_CONFIG": goodCfg},
			endpoints: []string{"https://cfg-1:2379", "https://cfg-2:2379"}, store: "file:///from-config", cluster: "cfgcluster"},
		{name: "ETCDCTL beats config", args: []string{"--config", goodCfg}, env: map[string]string{"ETCDCTL_ENDPOINTS": "http://ctl:2379"},
			endpoints: []string{"http://ctl:2379"}, store: "file:///from-config", cluster: "cfgcluster"},
		{name: "ETCDGUARD beats ETCDCTL", env: map[string]string{"ETCDCTL_ENDPOINTS": "http://ctl:2379", "ETCDGUARD_ENDPOINTS": "http://g1:2379,http://g2:2379"},
			endpoints: []string{"http://g1:2379", "http://g2:2379"}},
		{name: "flag beats all", args: []string{"--config", goodCfg, "--endpoints", "http://flag:2379", "--cluster", "flagc"},
			env:       map[string]string{"ETCDCTL_ENDPOINTS": "http://ctl:2379", "ETCDGUARD_ENDPOINTS": "http://g:2379", "ETCDGUARD_CLUSTER": "envc"},
			endpoints: []string{"http://flag:2379"}, store: "file:///from-config", cluster: "flagc"},
		{name: "ETCDCTL_ names only etcd flags", env: map[string]string{"ETCDCTL_STORE": "file:///nope", "ETCDGUARD_S3_ENDPOINT": "http://s3:9000"},
			endpoints: []string{"127.0.0.1:2379"}},
		{name: "unknown config key", args: []string{"--config", cfg}, wantErr: `line 4: unknown key "schedul" (did you mean "schedule"?)`},
		{name: "version is no config key", args: []string{"--config", versionCfg}, wantErr: `line 2: "version" is an action of the command line, not a setting`},
		{name: "key holding a secret is not quoted", args: []string{"--config", foldedCfg}, wantErr: `line 2: unknown key, not shown`},
		{name: "missing config file", args: []string{"--config", "/nonexistent.yaml"}, wantErr: "reading config file"},
		{name: "bad env value", env: map[string]string{"ETCDGUARD_DIAL_TIMEOUT": "soon"}, wantErr: "invalid ETCDGUARD_DIAL_TIMEOUT for --dial-timeout"},
		{name: "bad output", args: []string{"-o", "yaml"}, wantErr: `unknown --output "yaml"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"ETCDCTL_ENDPOINTS", "ETCDGUARD_ENDPOINTS", "ETCDGUARD_CONFIG", "ETCDGUARD_STORE", "ETCDGUARD_CLUSTER"} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			g := &globalOptions{stdout: io.Discard, stderr: io.Discard}
			root := newRootCommandWith(g)
			root.SetArgs(append(tc.args, "version"))
			root.SetOut(io.Discard)
			err := root.Execute()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(g.etcd.Endpoints, tc.endpoints) || g.storeURL != tc.store || g.cluster != tc.cluster {
				t.Errorf("endpoints %q store %q cluster %q; want %q %q %q", g.etcd.Endpoints, g.storeURL, g.cluster, tc.endpoints, tc.store, tc.cluster)
			}
			if tc.name == "config file" && g.storeOpts.PartSize != 32<<20 {
				t.Errorf("part size %d from config", g.storeOpts.PartSize)
			}
			if tc.name == "ETCDCTL_ names only etcd flags" && g.storeOpts.S3Endpoint != "http://s3:9000" {
				t.Errorf("s3 endpoint %q from ETCDGUARD_S3_ENDPOINT", g.storeOpts.S3Endpoint)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"16MiB": 16 << 20, "5M": 5 << 20, "1GiB": 1 << 30, "4096": 4096, "64KiB": 64 << 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1.5MiB", "lots"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// A config file that holds a secret and that group or others can read gets one warning
// naming the file, the keys and the fix, never a value.
func TestConfigFileModeWarning(t *testing.T) {
	const token = "s3cr3t-t0ken-value"
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		keys    string // "" for no warning
	}{
		{"password, world-readable", "password: " + token + "\n", 0o644, "password"},
		{"password, group-readable", "password: " + token + "\n", 0o640, "password"},
		{"password, owner only", "password: " + token + "\n", 0o600, ""},
		{"password, owner read-only", "password: " + token + "\n", 0o400, ""},
		{"user with password", "user: root:" + token + "\n", 0o644, "user"},
		{"user name only", "user: root\n", 0o644, ""},
		{"slack webhook", "alert-slack-webhook: https://hooks.slack.com/services/T0/B0/" + token + "\n", 0o604, "alert-slack-webhook"},
		{"webhook with a token query", "alert-webhook: [\"https://hooks.example/alert?token=" + token + "\"]\n", 0o644, "alert-webhook"},
		{"webhook, its path may be its token", "alert-webhook: [https://hooks.example/alert/" + token + "]\n", 0o644, "alert-webhook"},
		{"S3 endpoint with credentials", "s3-endpoint: https://admin:" + token + "@minio:9000\n", 0o644, "s3-endpoint"},
		{"S3 endpoint without", "s3-endpoint: https://minio:9000\n", 0o644, ""},
		{"alertmanager with basic auth", "alert-alertmanager: [http://am:9093, http://user:" + token + "@am2:9093]\n", 0o644, "alert-alertmanager"},
		{"several", "password: " + token + "\nalert-slack-webhook: https://hooks.slack.com/services/T0/B0/" + token + "\n", 0o644, "password,alert-slack-webhook"},
		{"no secrets", "store: file:///backups\ncluster: prod\nidentity-file: /etc/etcdguard/age.key\ns3-sse-c-key-file: /etc/etcdguard/sse-c.key\n", 0o644, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"ETCDCTL_PASSWORD", "ETCDGUARD_PASSWORD", "ETCDCTL_USER", "ETCDGUARD_USER", "ETCDGUARD_CONFIG"} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			cfg := filepath.Join(t.TempDir(), "etcdguard.yaml")
			if err := os.WriteFile(cfg, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(cfg, tc.mode); err != nil { // WriteFile's mode is less the umask
				t.Fatal(err)
			}
			var stderr strings.Builder
			g := &globalOptions{stdout: io.Discard, stderr: &stderr}
			root := newRootCommandWith(g)
			root.SetArgs([]string{"--config", cfg, "--log-format", "json", "version"})
			root.SetOut(io.Discard)
			if err := root.Execute(); err != nil {
				t.Fatal(err)
			}
			warnings := grep(stderr.String(), "config file")
			if strings.Contains(stderr.String(), token) {
				t.Errorf("the secret is in the output: %s", stderr.String())
			}
			if tc.keys == "" {
				if warnings != "" {
					t.Errorf("unexpected warning: %s", warnings)
				}
				return
			}
			if strings.Count(warnings, "\n") != 0 || !strings.Contains(warnings, `"level":"WARN"`) ||
				!strings.Contains(warnings, "chmod 600 "+cfg) || !strings.Contains(warnings, `"keys":"`+tc.keys+`"`) ||
				!strings.Contains(warnings, fmt.Sprintf(`"mode":"%#o"`, tc.mode)) {
				t.Errorf("want one warning naming %s, keys %s, mode %#o and chmod 600; got %q", cfg, tc.keys, tc.mode, stderr.String())
			}
		})
	}
}

// Private key files others can read get a warning naming the flag and the file.
func TestKeyFileModeWarning(t *testing.T) {
	dir := t.TempDir()
	open, private := filepath.Join(dir, "age.key"), filepath.Join(dir, "sse-c.key")
	for path, mode := range map[string]os.FileMode{open: 0o644, private: 0o600} {
		if err := os.WriteFile(path, []byte("AGE-SECRET-KEY-1NOTREAL\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	var stderr strings.Builder
	g := &globalOptions{stdout: io.Discard, stderr: &stderr}
	root := newRootCommandWith(g)
	root.SetArgs([]string{"--identity-file", open, "--s3-sse-c-key-file", private, "--log-format", "json", "version"})
	root.SetOut(io.Discard)
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	got := grep(stderr.String(), "private key")
	if strings.Count(got, "\n") != 0 || !strings.Contains(got, "--identity-file "+open) || strings.Contains(got, private) || strings.Contains(stderr.String(), "NOTREAL") {
		t.Fatalf("want one warning for %s alone, without its content; got %q", open, stderr.String())
	}
}
