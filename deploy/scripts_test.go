package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// earlyExit matches a pipeline into a reader that may exit before its writer is done:
// under `set -o pipefail` the writer then dies of SIGPIPE and the script with exit 141, one
// run in a few (make demo did). Read everything instead (awk 'NR == 1', a variable).
var earlyExit = regexp.MustCompile(`\|\s*(head\b|grep\s+(-[a-zA-Z]*[qm]|--quiet|--max-count)|sed\s+(-n\s+)?'?[0-9]*q)`)

func TestScriptsHaveNoEarlyExitPipes(t *testing.T) {
	scripts, err := filepath.Glob("../scripts/*.sh")
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts found: %v", err)
	}
	for _, s := range append(scripts, "../.ci/run") {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "pipefail") {
			continue
		}
		for i, line := range strings.Split(string(b), "\n") {
			code, _, _ := strings.Cut(line, " #")
			if strings.HasPrefix(strings.TrimSpace(code), "#") {
				continue
			}
			if earlyExit.MatchString(code) {
				t.Errorf("%s:%d: %q can fail with SIGPIPE under pipefail", s, i+1, strings.TrimSpace(line))
			}
		}
	}
}
