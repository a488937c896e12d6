// Package version reports what etcdguard binary this is. `make build` and `make release`
// stamp it with -ldflags "-X github.com/etcdguard/etcdguard/internal/version.Version=v1.2.3
// -X ...Commit=<sha> -X ...Date=<RFC 3339>"; a binary built without them (`go install
// ...@v1.2.3`, a plain `go build`) falls back to what the Go toolchain recorded in it.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	etcdversion "go.etcd.io/etcd/api/v3/version"
)

// Set at link time by the Makefile; empty when built without -ldflags.
var (
	Version = ""
	Commit  = ""
	Date    = ""
)

// unknown stands for a field neither -ldflags nor the build info provides.
const unknown = "unknown"

// Info is what `etcdguard version -o json` prints.
type Info struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	// Date is the build date when stamped, else the commit time Go recorded (vcs.time, or
	// the time in a pseudo-version): a `go install`ed binary knows no build date.
	Date       string `json:"date"`
	Go         string `json:"go"`
	EtcdClient string `json:"etcd_client"`
	Platform   string `json:"platform"`
}

// Get returns the stamped values, falling back to the build info for each one missing.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(bi)
}

func get(bi *debug.BuildInfo) Info {
	info := Info{
		Version:    Version,
		Commit:     Commit,
		Date:       Date,
		Go:         runtime.Version(),
		EtcdClient: etcdversion.Version,
		Platform:   runtime.GOOS + "/" + runtime.GOARCH,
	}
	var mainVersion, revision, vcsTime string
	modified := false
	if bi != nil {
		mainVersion = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				vcsTime = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	// A module proxy's copy carries no VCS data, but a pseudo-version
	// (v0.0.0-20261130131048-7ac914b1c2d3) names the commit and its time.
	pseudoTime, pseudoRev := parsePseudo(mainVersion)
	if info.Version == "" {
		switch {
		case mainVersion != "" && mainVersion != "(devel)":
			info.Version = mainVersion // `go install ...@v1.2.3`, or Go's VCS stamping
		case revision != "":
			info.Version = "dev-" + short(revision)
			if modified {
				info.Version += "-dirty"
			}
		default:
			info.Version = "dev"
		}
	}
	if info.Commit == "" {
		info.Commit = firstOf(revision, pseudoRev, unknown)
	}
	if info.Date == "" {
		info.Date = firstOf(vcsTime, pseudoTime, unknown)
	}
	return info
}

// String is the version alone, as recorded in snapshot manifests and metrics.
func String() string { return Get().Version }

// Line is the one line `etcdguard --version` prints after "etcdguard ".
func (i Info) Line() string {
	return fmt.Sprintf("%s (commit %s, built %s, %s, etcd client %s, %s)", i.Version, short(i.Commit), i.Date, i.Go, i.EtcdClient, i.Platform)
}

// parsePseudo returns the commit time (RFC 3339) and revision prefix a Go pseudo-version
// encodes, or empty strings for a release version or none.
func parsePseudo(v string) (commitTime, rev string) {
	v, _, _ = strings.Cut(v, "+") // +incompatible, +dirty
	parts := strings.Split(v, "-")
	if len(parts) < 3 {
		return "", ""
	}
	rev = parts[len(parts)-1]
	stamp := parts[len(parts)-2]
	// vX.Y.Z-pre.0.TIMESTAMP-REV and vX.Y.(Z+1)-0.TIMESTAMP-REV put the time after a dot.
	if i := strings.LastIndexByte(stamp, '.'); i >= 0 {
		stamp = stamp[i+1:]
	}
	t, err := time.Parse("20060102150405", stamp)
	if err != nil || len(rev) != 12 || strings.Trim(rev, "0123456789abcdef") != "" {
		return "", ""
	}
	return t.UTC().Format(time.RFC3339), rev
}

func short(rev string) string {
	if len(rev) > 12 && strings.Trim(rev, "0123456789abcdef") == "" {
		return rev[:12]
	}
	return rev
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
