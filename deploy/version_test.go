package deploy

import (
	"os"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// imageRepo is where make release's image is pushed (release.sh's IMAGE_REPO default, the
// chart's image.repository).
const imageRepo = "ghcr.io/etcdguard/etcdguard"

// releaseVersion is what scripts/release.sh accepts as VERSION: vX.Y.Z or vX.Y.Z-rc.N.
var releaseVersion = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-(alpha|beta|rc)\.(0|[1-9][0-9]*))?$`)

var (
	// An image reference with a tag. `:$VERSION` in shell examples and the `:vX.Y.Z` of
	// docs/release.md's how-to are no pinned version.
	imageTagRef = regexp.MustCompile(regexp.QuoteMeta(imageRepo) + `:([^$\s"'` + "`" + `)]+)`)
	placeholder = regexp.MustCompile(`^vX\.Y\.Z\b`)
	// `go install github.com/etcdguard/etcdguard/cmd/etcdguard@v0.1.0` and `go install ...@v0.1.0`;
	// @latest and pseudo-versions outside an install line are not a release's name.
	installRef = regexp.MustCompile(`go install [^\n]*?@(v[0-9][^\s"'` + "`" + `)]*)`)
)

// chartVersions reads Chart.yaml's appVersion (the one place the shipped version is named,
// which release.sh compares VERSION with) and its chart version.
func chartVersions(t *testing.T) (appVersion, version string) {
	t.Helper()
	b, err := os.ReadFile("helm/etcdguard/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
		Version    string `json:"version"`
	}
	if err := yaml.Unmarshal(b, &chart); err != nil {
		t.Fatalf("Chart.yaml: %v", err)
	}
	return chart.AppVersion, chart.Version
}

// matches returns every first group of re in file (relative to deploy/).
func matches(file string, re *regexp.Regexp) func(t *testing.T) []string {
	return func(t *testing.T) []string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			if !placeholder.MatchString(m[1]) {
				out = append(out, m[1])
			}
		}
		return out
	}
}

// TestShippedVersionsAgree: every place a user copies the version from names Chart.yaml's
// appVersion, so the tag make release publishes is the one the manifests pull. Bumping one
// and not the others fails here; docs/release.md lists them.
func TestShippedVersionsAgree(t *testing.T) {
	app, chartVersion := chartVersions(t)
	if !releaseVersion.MatchString(app) {
		t.Fatalf("Chart.yaml appVersion %q is not a release version vX.Y.Z[-rc.N] (scripts/release.sh would refuse it)", app)
	}
	refs := []struct {
		what string
		min  int // references that must exist: 0 where a file need not name a version
		get  func(t *testing.T) []string
	}{
		{"Chart.yaml version (appVersion without the v)", 1, func(*testing.T) []string { return []string{"v" + chartVersion} }},
		{"static-pod.yaml container image", 1, func(t *testing.T) []string {
			b, err := os.ReadFile("static-pod.yaml")
			if err != nil {
				t.Fatal(err)
			}
			var pod corev1.Pod
			if err := yaml.Unmarshal(b, &pod); err != nil {
				t.Fatal(err)
			}
			var tags []string
			for _, c := range pod.Spec.Containers {
				tag, ok := strings.CutPrefix(c.Image, imageRepo+":")
				if !ok {
					tag = c.Image // another repository or no tag: reported whole
				}
				tags = append(tags, tag)
			}
			return tags
		}},
		{"static-pod.yaml image references", 1, matches("static-pod.yaml", imageTagRef)},
		{"helm chart's rendered default image", 1, func(t *testing.T) []string {
			r, err := renderChart(t, nil, "testdata/helm-minimal.yaml")
			if err != nil {
				t.Fatal(err)
			}
			img := r.ds.Spec.Template.Spec.Containers[0].Image
			if tag, ok := strings.CutPrefix(img, imageRepo+":"); ok {
				return []string{tag}
			}
			return []string{img}
		}},
		{"helm values.yaml image tags", 0, matches("helm/etcdguard/values.yaml", regexp.MustCompile(`(?m)^\s+tag:\s*"?([^"\s#]+)`))},
		{"helm chart README image", 0, matches("helm/etcdguard/README.md", imageTagRef)},
		{"helm chart README go install", 0, matches("helm/etcdguard/README.md", installRef)},
		{"runbooks/restore.md image", 1, matches("runbooks/restore.md", imageTagRef)},
		{"runbooks/restore.md go install", 1, matches("runbooks/restore.md", installRef)},
		{"docs/release.md image", 0, matches("../docs/release.md", imageTagRef)},
		{"docs/release.md go install", 2, matches("../docs/release.md", installRef)},
		{"docs/release.md release download V=", 1, matches("../docs/release.md", regexp.MustCompile(`(?m)^V=(\S+)`))},
		{"docs/release.md --version example", 1, matches("../docs/release.md", regexp.MustCompile(`etcdguard (v\S+) \(commit`))},
		{"docs/release.md version -o json example", 1, matches("../docs/release.md", regexp.MustCompile(`"version": "([^"]+)"`))},
		{"README.md image", 0, matches("../README.md", imageTagRef)},
		{"README.md go install", 0, matches("../README.md", installRef)},
	}
	for _, ref := range refs {
		t.Run(ref.what, func(t *testing.T) {
			got := ref.get(t)
			if len(got) < ref.min {
				t.Errorf("%d references found, want at least %d (did the text move?)", len(got), ref.min)
			}
			for _, v := range got {
				if v != app {
					t.Errorf("names %q, Chart.yaml's appVersion is %q: bump Chart.yaml, static-pod.yaml and the docs together (docs/release.md)", v, app)
				}
			}
		})
	}
}
