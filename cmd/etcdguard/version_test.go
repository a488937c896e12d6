package main

import (
	"archive/zip"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	etcdversion "go.etcd.io/etcd/api/v3/version"
)

const modulePath = "github.com/etcdguard/etcdguard"

// TestVersion builds etcdguard the three ways a user gets it and checks what --version,
// version and version -o json say: stamped by `make build`/`make release` (-ldflags -X),
// a plain `go build` (nothing to report but "dev"), and `go install ...@version` from a
// module proxy (the version, commit and commit time Go recorded in the binary).
func TestVersion(t *testing.T) {
	const commit = "0123456789abcdef0123456789abcdef01234567"
	pkg := modulePath + "/internal/version"
	type want struct{ version, commit, date string }
	for _, tc := range []struct {
		name  string
		build func(t *testing.T, out string) want
	}{
		{"ldflags", func(t *testing.T, out string) want {
			goBuild(t, out, "-ldflags", fmt.Sprintf("-X %s.Version=v1.2.3 -X %s.Commit=%s -X %s.Date=2026-11-30T12:00:00Z", pkg, pkg, commit, pkg))
			return want{"v1.2.3", commit, "2026-11-30T12:00:00Z"}
		}},
		{"plain go build", func(t *testing.T, out string) want {
			goBuild(t, out, "-buildvcs=false")
			return want{"dev", "unknown", "unknown"}
		}},
		{"go install at a version", func(t *testing.T, out string) want {
			if testing.Short() {
				t.Skip("builds etcdguard from a module proxy")
			}
			stamp := time.Now().UTC().Truncate(time.Second)
			rev := make([]byte, 6)
			rand.Read(rev)
			version := fmt.Sprintf("v0.0.0-%s-%x", stamp.Format("20060102150405"), rev)
			goInstall(t, version, out)
			return want{version, hex.EncodeToString(rev), stamp.Format(time.RFC3339)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "etcdguard")
			w := tc.build(t, bin)
			wantLine := fmt.Sprintf("etcdguard %s (commit %s, built %s, %s, etcd client %s, %s/%s)\n",
				w.version, w.commit[:min(12, len(w.commit))], w.date, runtime.Version(), etcdversion.Version, runtime.GOOS, runtime.GOARCH)
			for _, args := range [][]string{{"--version"}, {"version"}} {
				if got := runBin(t, bin, args...); got != wantLine {
					t.Errorf("etcdguard %s:\n got %q\nwant %q", strings.Join(args, " "), got, wantLine)
				}
			}
			var got map[string]string
			if err := json.Unmarshal([]byte(runBin(t, bin, "version", "-o", "json")), &got); err != nil {
				t.Fatal(err)
			}
			wantJSON := map[string]string{"version": w.version, "commit": w.commit, "date": w.date, "go": runtime.Version(),
				"etcd_client": etcdversion.Version, "platform": runtime.GOOS + "/" + runtime.GOARCH}
			if fmt.Sprint(got) != fmt.Sprint(wantJSON) {
				t.Errorf("version -o json:\n got %v\nwant %v", got, wantJSON)
			}
		})
	}
}

// The flag is the root's alone and needs no config: a broken config file must not hide
// which binary is installed.
func TestVersionFlagIgnoresConfig(t *testing.T) {
	r := run(t, []string{"ETCDGUARD_CONFIG=/nonexistent/config.yaml"}, "--version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "etcdguard ") || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("--version with a missing config: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := run(t, nil, "-v"); r.code == 0 {
		t.Fatalf("-v is accepted: %q", r.stdout)
	}
}

func runBin(t *testing.T, bin string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stderr = []string{"HOME=" + t.TempDir()}, &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("etcdguard %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

func goBuild(t *testing.T, out string, flags ...string) {
	t.Helper()
	args := append(append([]string{"build"}, flags...), "-o", out, ".")
	if b, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// goInstall serves this tree as module version from a file:// module proxy (the other
// modules come from the local module cache, so nothing is fetched) and runs
// `go install github.com/etcdguard/etcdguard/cmd/etcdguard@version` as a user would: it
// fails if our go.mod has replace directives or the module zip misses a file the build needs.
// The version is unique, and removed from the module cache afterwards.
func goInstall(t *testing.T, version, out string) {
	t.Helper()
	gomod := goEnv(t, "GOMOD")
	modCache := goEnv(t, "GOMODCACHE")
	proxy := t.TempDir()
	dir := filepath.Join(proxy, modulePath, "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	modFile, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatal(err)
	}
	stamp, _ := time.Parse("20060102150405", strings.Split(version, "-")[1])
	info := fmt.Sprintf(`{"Version":%q,"Time":%q}`, version, stamp.Format(time.RFC3339))
	for name, data := range map[string][]byte{"list": []byte(version + "\n"), version + ".info": []byte(info), version + ".mod": modFile} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	moduleZip(t, filepath.Dir(gomod), version, filepath.Join(dir, version+".zip"))
	t.Cleanup(func() {
		// The module cache is read-only; only this test's version is removed.
		extracted := filepath.Join(modCache, modulePath+"@"+version)
		filepath.WalkDir(extracted, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
		os.RemoveAll(extracted)
		dl := filepath.Join(modCache, "cache", "download", modulePath, "@v")
		files, _ := filepath.Glob(filepath.Join(dl, version+".*"))
		for _, f := range files {
			os.Remove(f)
		}
		// The version list go wrote, and the directories, if nothing else is in them.
		if rest, _ := os.ReadDir(dl); len(rest) == 1 && rest[0].Name() == "list" {
			os.Remove(filepath.Join(dl, "list"))
		}
		for _, d := range []string{dl, filepath.Dir(dl), filepath.Dir(filepath.Dir(dl)), filepath.Dir(extracted)} {
			os.Remove(d) // fails, as it should, when not empty
		}
	})
	cmd := exec.Command("go", "install", modulePath+"/cmd/etcdguard@"+version)
	cmd.Dir = t.TempDir() // outside our module, as a user runs it
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Dir(out), "GOFLAGS=", "GOTOOLCHAIN=local",
		"GOPROXY=file://"+filepath.ToSlash(proxy)+",file://"+filepath.ToSlash(filepath.Join(modCache, "cache", "download")),
		// The checksum database is not reachable from the test machines; the other modules come
		// from the local cache, checked when they were first downloaded.
		"GOSUMDB=off", "GOPRIVATE=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install ...@%s: %v\n%s", version, err, b)
	}
}

func goEnv(t *testing.T, name string) string {
	t.Helper()
	b, err := exec.Command("go", "env", name).Output()
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		t.Fatalf("go env %s: %v", name, err)
	}
	return string(bytes.TrimSpace(b))
}

// moduleZip writes root as the module zip a proxy serves: every regular file under
// module@version/, without nested modules (internal/tools/* with their own go.mod), VCS
// data and build output, as `go mod download` would see a tagged release.
func moduleZip(t *testing.T, root, version, out string) {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if p == root {
				return nil
			}
			if slices.Contains([]string{".git", "bin", "build"}, rel) {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || strings.HasSuffix(p, ".test") || rel == ".git" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		w, err := zw.Create(modulePath + "@" + version + "/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	})
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = os.WriteFile(out, buf.Bytes(), 0o644)
	}
	if err != nil {
		t.Fatalf("module zip: %v", err)
	}
}
