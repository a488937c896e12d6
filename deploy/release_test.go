package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReleaseRefuses runs scripts/release.sh release in a git repository holding only the
// script and Chart.yaml, with a `go` on PATH that records its call and fails: a refusal must
// come before anything is built or written, and a release that passes the checks reaches go
// (and fails there, in milliseconds, instead of building).
func TestReleaseRefuses(t *testing.T) {
	app, _ := chartVersions(t)
	tmp := t.TempDir()
	repo := filepath.Join(tmp, "repo")
	stub := filepath.Join(tmp, "stub")
	goCalls := filepath.Join(tmp, "go-calls")
	copyFile(t, "../scripts/release.sh", filepath.Join(repo, "scripts/release.sh"))
	if err := os.Chmod(filepath.Join(repo, "scripts/release.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, "helm/etcdguard/Chart.yaml", filepath.Join(repo, "deploy/helm/etcdguard/Chart.yaml"))
	writeFile(t, filepath.Join(repo, ".gitignore"), "build/\n")
	writeFile(t, filepath.Join(stub, "go"), "#!/bin/sh\necho \"$*\" >>\"$GO_CALLS\"\nexit 3\n")
	if err := os.Chmod(filepath.Join(stub, "go"), 0o755); err != nil {
		t.Fatal(err)
	}

	// Nothing of the caller's git setup (GIT_DIR from a hook, signing) reaches the scratch repo.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GIT_") && !strings.HasPrefix(kv, "RELEASE_SNAPSHOT=") && !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	env = append(env, "PATH="+stub+string(os.PathListSeparator)+os.Getenv("PATH"), "GO_CALLS="+goCalls,
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"}, args...)...)
		cmd.Dir, cmd.Env = repo, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q")
	git("add", "-A")
	git("commit", "-q", "-m", "release")
	head := git("rev-parse", "HEAD")

	release := func(t *testing.T, version string, extraEnv ...string) (stderr string, exit int) {
		t.Helper()
		os.Remove(goCalls)
		cmd := exec.Command("scripts/release.sh", "release")
		cmd.Dir = repo
		cmd.Env = append(append(env, "VERSION="+version, "COMMIT="+head, "DATE=2026-11-30T00:00:00Z",
			"LDFLAGS=-X github.com/etcdguard/etcdguard/internal/version.Version="+version), extraEnv...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			exit = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return errb.String(), exit
	}
	goRan := func() bool { _, err := os.Stat(goCalls); return err == nil }
	noBuild := func(t *testing.T) {
		t.Helper()
		if goRan() {
			t.Error("go ran: the refusal must come before any build")
		}
		if _, err := os.Stat(filepath.Join(repo, "build")); !os.IsNotExist(err) {
			t.Errorf("build/ exists after a refusal (%v)", err)
		}
	}

	refusals := []struct {
		name, version string
		setup         func(t *testing.T) (undo func())
		want          []string
	}{
		{"untagged dirty describe", "abc1234-dirty", nil,
			[]string{"not a release tag vX.Y.Z", "deploy/helm/etcdguard/Chart.yaml", "deploy/static-pod.yaml", "docs/release.md", "RELEASE_SNAPSHOT=1"}},
		{"describe after the tag", app + "-3-gabc1234", nil, []string{"not a release tag"}},
		{"tag on a dirty tree", app + "-dirty", nil, []string{"uncommitted changes"}},
		{"tag the manifests do not pull", "v9.9.9", nil,
			[]string{"not deploy/helm/etcdguard/Chart.yaml's appVersion " + app, "deploy/static-pod.yaml", "docs/release.md"}},
		{"matching version, not tagged", app, nil, []string{"tag " + app + " is not HEAD"}},
		{"tagged, untracked file", app, func(t *testing.T) func() {
			git("tag", "-a", "-m", app, app)
			writeFile(t, filepath.Join(repo, "stray.go"), "package main\n")
			return func() { os.Remove(filepath.Join(repo, "stray.go")); git("tag", "-d", app) }
		}, []string{"uncommitted or untracked"}},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				defer c.setup(t)()
			}
			stderr, exit := release(t, c.version)
			if exit == 0 {
				t.Fatalf("VERSION=%s released, want a refusal", c.version)
			}
			if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "release.sh: refusing to release: ") {
				t.Errorf("stderr is not one refusal line:\n%s", stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("refusal does not say %q:\n%s", w, stderr)
				}
			}
			noBuild(t)
		})
	}

	t.Run("RELEASE_SNAPSHOT=1 builds anyway", func(t *testing.T) {
		stderr, exit := release(t, "abc1234-dirty", "RELEASE_SNAPSHOT=1")
		if !strings.Contains(stderr, "release.sh: WARNING: RELEASE_SNAPSHOT=1") || !strings.Contains(stderr, "not a release tag") {
			t.Errorf("no snapshot warning naming the reason:\n%s", stderr)
		}
		if !goRan() || exit != 3 {
			t.Errorf("the snapshot did not go on to build (go ran %v, exit %d):\n%s", goRan(), exit, stderr)
		}
		os.RemoveAll(filepath.Join(repo, "build"))
	})

	// The stub go keeps this from building: it shows the checks let a real release through.
	t.Run("tagged clean matching release passes the checks", func(t *testing.T) {
		git("tag", "-a", "-m", app, app)
		defer git("tag", "-d", app)
		stderr, exit := release(t, app)
		if strings.Contains(stderr, "refusing") || strings.Contains(stderr, "WARNING") {
			t.Errorf("release %s refused or warned:\n%s", app, stderr)
		}
		if !goRan() || exit != 3 {
			t.Errorf("release %s did not reach the build (go ran %v, exit %d):\n%s", app, goRan(), exit, stderr)
		}
	})
}
