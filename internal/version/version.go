// Package version reports etcdguard's version, set at build time with
// -ldflags "-X github.com/etcdguard/etcdguard/internal/version.Version=v1.2.3".
package version

import "runtime/debug"

// Version is the release version; "dev" builds report their VCS revision instead.
var Version = "dev"

// String returns the version to record in manifests and print in --version.
func String() string {
	if Version != "dev" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return Version
}
