package version

import (
	"os"
	"runtime/debug"
	"strings"
	"testing"
)

// TestGet: -ldflags values win; each missing one falls back to what Go recorded.
func TestGet(t *testing.T) {
	const rev = "7ac914ba96fff201f94026a0a4113408541edc04"
	vcs := []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: "2026-11-30T13:10:48Z"}}
	for _, tc := range []struct {
		name                  string
		stamped               [3]string // Version, Commit, Date
		main                  string
		settings              []debug.BuildSetting
		version, commit, date string
	}{
		{"stamped", [3]string{"v1.2.3", rev, "2026-12-01T00:00:00Z"}, "(devel)", vcs, "v1.2.3", rev, "2026-12-01T00:00:00Z"},
		{"version only stamped", [3]string{"v1.2.3", "", ""}, "(devel)", vcs, "v1.2.3", rev, "2026-11-30T13:10:48Z"},
		{"go install at a tag", [3]string{}, "v1.2.3", nil, "v1.2.3", "unknown", "unknown"},
		{"go install at a pseudo-version", [3]string{}, "v0.0.0-20261130131048-7ac914ba96ff", nil, "v0.0.0-20261130131048-7ac914ba96ff", "7ac914ba96ff", "2026-11-30T13:10:48Z"},
		{"pseudo-version after a tag", [3]string{}, "v1.2.4-0.20261130131048-7ac914ba96ff", nil, "v1.2.4-0.20261130131048-7ac914ba96ff", "7ac914ba96ff", "2026-11-30T13:10:48Z"},
		{"go build in a clone", [3]string{}, "v0.0.0-20261130131048-7ac914ba96ff+dirty", append(vcs, debug.BuildSetting{Key: "vcs.modified", Value: "true"}), "v0.0.0-20261130131048-7ac914ba96ff+dirty", rev, "2026-11-30T13:10:48Z"},
		{"go build, VCS only", [3]string{}, "(devel)", append(vcs, debug.BuildSetting{Key: "vcs.modified", Value: "true"}), "dev-7ac914ba96ff-dirty", rev, "2026-11-30T13:10:48Z"},
		{"nothing known", [3]string{}, "(devel)", nil, "dev", "unknown", "unknown"},
		{"prerelease is no pseudo-version", [3]string{}, "v1.2.3-rc-1", nil, "v1.2.3-rc-1", "unknown", "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			Version, Commit, Date = tc.stamped[0], tc.stamped[1], tc.stamped[2]
			t.Cleanup(func() { Version, Commit, Date = "", "", "" })
			got := get(&debug.BuildInfo{Main: debug.Module{Path: "github.com/etcdguard/etcdguard", Version: tc.main}, Settings: tc.settings})
			if got.Version != tc.version || got.Commit != tc.commit || got.Date != tc.date {
				t.Fatalf("got %s / %s / %s, want %s / %s / %s", got.Version, got.Commit, got.Date, tc.version, tc.commit, tc.date)
			}
			if got.EtcdClient == "" || got.Go == "" || got.Platform == "" {
				t.Fatalf("empty fields: %+v", got)
			}
		})
	}
	if get(nil).Version != "dev" {
		t.Fatal("no build info: want dev")
	}
}

// etcd_client must be the version of the etcd modules go.mod pins (client, server, etcdctl
// and etcdutl alike: the image's etcdctl and etcdutl are built from them), not a constant
// that drifts. Test binaries carry no module list, so go.mod is read.
func TestEtcdClientIsGoModVersion(t *testing.T) {
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range []string{"go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/client/v3", "go.etcd.io/etcd/etcdctl/v3", "go.etcd.io/etcd/etcdutl/v3"} {
		want := "\t" + mod + " v" + Get().EtcdClient
		if !strings.Contains(string(gomod), want+"\n") && !strings.Contains(string(gomod), want+" ") {
			t.Errorf("go.mod has no %q: etcd_client %s is not the etcd version built in", strings.TrimSpace(want), Get().EtcdClient)
		}
	}
}
