package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

const quickStartHeading = "## Quick start: five minutes on a laptop"

// quickStartStep is one `$ ` line of a console block of the README's quick start and the
// output the README shows for it.
type quickStartStep struct {
	line int // in README.md
	cmd  string
	want []string
}

// readQuickStart returns the commands of every console block of the README's quick
// start, in order.
func readQuickStart(t *testing.T) []quickStartStep {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testharness.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var steps []quickStartStep
	inSection, inBlock, found := false, false, false
	for n, l := range strings.Split(string(b), "\n") {
		switch {
		case !inBlock && strings.HasPrefix(l, "## "):
			inSection = l == quickStartHeading
			found = found || inSection
		case !inSection:
		case !inBlock && l == "```console":
			inBlock = true
		case inBlock && l == "```":
			inBlock = false
		case inBlock && strings.HasPrefix(l, "$ "):
			steps = append(steps, quickStartStep{line: n + 1, cmd: strings.TrimPrefix(l, "$ ")})
		case inBlock && len(steps) == 0:
			t.Fatalf("README.md:%d: output %q before any `$ ` command in the quick start", n+1, l)
		case inBlock:
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, l)
		}
	}
	if !found || len(steps) == 0 {
		t.Fatalf("README.md has no console block under %q", quickStartHeading)
	}
	return steps
}

// quickStartMap is what the README's commands assume of a laptop (/tmp/qs, etcd on its
// default ports, the restored member on 12379/12380) and where the test puts it instead.
type quickStartMap struct {
	dir   string
	ports map[string]int // README's port → a free one
}

func (m quickStartMap) url(readmePort string) string {
	return "http://" + m.addr(readmePort)
}

func (m quickStartMap) addr(readmePort string) string {
	return "127.0.0.1:" + strconv.Itoa(m.ports[readmePort])
}

// toHere maps the README's paths and addresses in a command to the test's.
func (m quickStartMap) toHere(s string) string {
	return strings.NewReplacer("/tmp/qs", m.dir, "127.0.0.1:12379", m.addr("12379"), "127.0.0.1:12380", m.addr("12380")).Replace(s)
}

// toReadme maps the test's paths and addresses in real output back to the README's.
func (m quickStartMap) toReadme(s string) string {
	var pairs []string
	for _, p := range []string{"2379", "2380", "12379", "12380"} {
		pairs = append(pairs, m.addr(p), "127.0.0.1:"+p)
	}
	return strings.NewReplacer(append(pairs, m.dir, "/tmp/qs")...).Replace(s)
}

var (
	qsDefaultEtcd  = regexp.MustCompile(`^etcd --data-dir (\S+) &$`)
	qsElidedEtcd   = regexp.MustCompile(`^etcd --name (\S+) (.*) \.\.\. &$`)
	qsPortOrHost   = regexp.MustCompile(`:\d+|localhost`)
	qsSnapshotID   = regexp.MustCompile(`\b\d{8}T\d{6}Z-[0-9a-f]{6}\b`)
	qsPlanID       = regexp.MustCompile(`\bp-\d{8}T\d{6}-[0-9a-f]{6}\b`)
	qsAttempt      = regexp.MustCompile(`\ba-[0-9a-f]{12}\b`) // a confirm's, in its saved copy's name
	qsClusterToken = regexp.MustCompile(`\betcd-restore-[0-9a-f]+\b`)
	qsSHA256       = regexp.MustCompile(`\b[0-9a-f]{64}\b`)
	qsMemberID     = regexp.MustCompile(`\bmember [0-9a-f]{1,16}\b`) // etcd prints them without leading zeros
	qsTime         = regexp.MustCompile(`\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})|\b\d{8}T\d{6}Z?\b`)
	qsDuration     = regexp.MustCompile(`\b(\d+(\.\d+)?(ms|µs|ns|h|m|s))+\b`)
	qsSize         = regexp.MustCompile(`\b\d+(\.\d+)? (B|KiB|MiB|GiB)\b`)
	qsSpaces       = regexp.MustCompile(`  +`)
)

// qsNormalizer replaces in output what differs from run to run. Values that name
// something (snapshot, history and plan ids, tokens, checksums, member ids) become
// numbered in order of first appearance, so the README's and the real transcript still
// have to agree on which output names the same thing; times, ages and durations become
// one placeholder each.
type qsNormalizer struct {
	seen map[string][]string // kind → values, in order of first appearance
}

func (n *qsNormalizer) numbered(kind string, re *regexp.Regexp, s string) string {
	return re.ReplaceAllStringFunc(s, func(v string) string {
		prefix, v := cutWord(v)
		i := n.index(kind, v)
		if i < 0 {
			n.seen[kind] = append(n.seen[kind], v)
			i = len(n.seen[kind]) - 1
		}
		return fmt.Sprintf("%s<%s-%d>", prefix, kind, i+1)
	})
}

// cutWord splits "member 8e9e05c52164694d" into the word that says what the value is and
// the value.
func cutWord(v string) (string, string) {
	if i := strings.LastIndexByte(v, ' '); i >= 0 {
		return v[:i+1], v[i+1:]
	}
	return "", v
}

func (n *qsNormalizer) index(kind, v string) int {
	for i, s := range n.seen[kind] {
		if s == v {
			return i
		}
	}
	return -1
}

func (n *qsNormalizer) normalize(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		l = n.numbered("id", qsSnapshotID, l) // snapshots and histories share the form
		l = n.numbered("plan", qsPlanID, l)
		l = n.numbered("attempt", qsAttempt, l)
		l = n.numbered("token", qsClusterToken, l)
		l = n.numbered("sha256", qsSHA256, l)
		l = n.numbered("member", qsMemberID, l)
		l = qsTime.ReplaceAllString(l, "<time>")
		l = qsDuration.ReplaceAllString(l, "<duration>")
		// A snapshot's size varies by a few KiB from run to run (etcd's db pages); what
		// the keys' values weigh does not.
		l = replaceAllIndexFunc(qsSize, l, func(m string, end int) string {
			if strings.HasPrefix(l[end:], " of values") {
				return m
			}
			return "<size>"
		})
		// Column widths follow the temp dir's length and the sizes, so only the cells
		// and their order are compared, not the padding.
		out[i] = qsSpaces.ReplaceAllString(l, "  ")
	}
	return out
}

func replaceAllIndexFunc(re *regexp.Regexp, s string, f func(match string, end int) string) string {
	var b strings.Builder
	last := 0
	for _, m := range re.FindAllStringIndex(s, -1) {
		b.WriteString(s[last:m[0]])
		b.WriteString(f(s[m[0]:m[1]], m[1]))
		last = m[1]
	}
	b.WriteString(s[last:])
	return b.String()
}

// qsShell is one bash session the quick start's commands run in, one after the other, as
// an operator types them: what one exports or starts in the background lives on.
type qsShell struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	dir   string // each command's stdout, stderr and exit code
	n     int
}

type qsResult struct {
	stdout, stderr string
	code           int
}

func startQuickStartShell(t *testing.T, env []string, dir string) *qsShell {
	t.Helper()
	sh := &qsShell{dir: t.TempDir(), lines: make(chan string, 16)}
	sh.cmd = exec.Command("bash", "--noprofile", "--norc")
	sh.cmd.Env, sh.cmd.Dir = env, dir
	// Its own process group, which the etcds it starts in the background share (no job
	// control in a non-interactive shell): the cleanup ends them all.
	sh.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	sh.stdin = must(sh.cmd.StdinPipe())
	stdout := must(sh.cmd.StdoutPipe())
	var stderr strings.Builder
	sh.cmd.Stderr = &stderr
	if err := sh.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			sh.lines <- sc.Text()
		}
		close(sh.lines)
	}()
	t.Cleanup(func() {
		sh.stdin.Close()
		pg := sh.cmd.Process.Pid
		syscall.Kill(-pg, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { sh.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		// The background etcds are not bash's to wait for: make sure they are gone before
		// t.TempDir removes their data dirs.
		for deadline := time.Now().Add(10 * time.Second); syscall.Kill(-pg, 0) == nil && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		syscall.Kill(-pg, syscall.SIGKILL)
		<-done
		if s := stderr.String(); s != "" {
			t.Logf("the quick start's shell said on stderr:\n%s", s)
		}
	})
	return sh
}

// run runs one command line in the session, after the test's own setup pre, and returns
// what the line printed.
func (sh *qsShell) run(t *testing.T, pre, line string) qsResult {
	t.Helper()
	sh.n++
	base := filepath.Join(sh.dir, strconv.Itoa(sh.n))
	marker := fmt.Sprintf("@@quickstart-done-%d", sh.n)
	// The newline before } lets a command end in & or a comment.
	script := fmt.Sprintf("%s\n{ %s\n} >%s.out 2>%s.err; echo $? >%s.rc; echo %s\n", pre, line, base, base, base, marker)
	if _, err := io.WriteString(sh.stdin, script); err != nil {
		t.Fatalf("writing %q to the shell: %v", line, err)
	}
	timeout := time.After(time.Minute)
	for done := false; !done; {
		select {
		case l, ok := <-sh.lines:
			if !ok {
				t.Fatalf("the shell exited during `%s`", line)
			}
			done = l == marker
		case <-timeout:
			t.Fatalf("`%s` did not finish within a minute", line)
		}
	}
	read := func(ext string) string { return string(must(os.ReadFile(base + ext))) }
	return qsResult{stdout: read(".out"), stderr: read(".err"), code: must(strconv.Atoi(strings.TrimSpace(read(".rc"))))}
}

// waitEtcd waits until the etcd just started in the background at addr is healthy.
func waitEtcd(t *testing.T, etcdctl, addr, logPath string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cmd := exec.Command(etcdctl, "--endpoints", addr, "--dial-timeout", "1s", "endpoint", "health")
		cmd.Env = []string{} // an ETCDCTL_ENDPOINTS of the test's own would make etcdctl refuse --endpoints
		out, err := cmd.CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("etcd at %s is not healthy after 30s: %v\n%s\netcd's log:\n%s", addr, err, out, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReadmeQuickStart runs the README's quick start as written, in one shell, against
// the etcdguard built from this tree and a real etcd, and checks that every command
// prints what the README shows (ids, times, sizes and the like aside). Only /tmp/qs and
// the fixed ports are moved, so two runs on a machine do not meet.
func TestReadmeQuickStart(t *testing.T) {
	steps := readQuickStart(t)
	binDir := os.Getenv("ETCDGUARD_BIN_DIR")
	if binDir == "" {
		binDir = filepath.Dir(testharness.Bin(t, "etcd"))
	}
	tools := t.TempDir()
	for name, path := range map[string]string{"etcdguard": etcdguardBin,
		"etcd": filepath.Join(binDir, "etcd"), "etcdctl": filepath.Join(binDir, "etcdctl")} {
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("%s: %v (ETCDGUARD_BIN_DIR, make tools)", name, err)
		}
		if err := os.Symlink(path, filepath.Join(tools, name)); err != nil {
			t.Fatal(err)
		}
	}
	ports := testharness.FreePorts(t, 4)
	m := quickStartMap{dir: t.TempDir(), ports: map[string]int{"2379": ports[0], "2380": ports[1], "12379": ports[2], "12380": ports[3]}}
	home := t.TempDir()
	env := []string{"PATH=" + tools + ":/usr/bin:/bin", "HOME=" + home, "AWS_EC2_METADATA_DISABLED=true",
		// On a laptop etcdguard finds etcd on its default port without being told.
		"ETCDGUARD_ENDPOINTS=" + m.addr("2379")}
	sh := startQuickStartShell(t, env, home)

	var transcript strings.Builder
	fmt.Fprintf(&transcript, "# README.md %q run by TestReadmeQuickStart on %s\n# /tmp/qs is %s; etcd's 2379/2380 are %d/%d, 12379/12380 are %d/%d\n",
		quickStartHeading, time.Now().UTC().Format(time.RFC3339), m.dir, ports[0], ports[1], ports[2], ports[3])
	defer func() {
		t.Logf("transcript:\n%s", transcript.String())
		if p := os.Getenv("QUICKSTART_TRANSCRIPT"); p != "" {
			if err := os.WriteFile(p, []byte(transcript.String()), 0o644); err != nil {
				t.Errorf("writing the transcript: %v", err)
			}
		}
	}()

	readmeN, realN := &qsNormalizer{seen: map[string][]string{}}, &qsNormalizer{seen: map[string][]string{}}
	var outputs []string // real stdout so far
	start := time.Now()
	for _, st := range steps {
		where := fmt.Sprintf("README.md:%d `$ %s`", st.line, st.cmd)
		line, err := quickStartCommand(st.cmd, m, readmeN, realN, outputs)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		// etcdctl too, but it refuses ETCDCTL_ENDPOINTS next to --endpoints.
		pre := "export ETCDCTL_ENDPOINTS=" + m.addr("2379")
		if strings.Contains(line, "--endpoints") {
			pre = "unset ETCDCTL_ENDPOINTS"
		}
		res := sh.run(t, pre, line)
		fmt.Fprintf(&transcript, "$ %s\n%s", line, res.stdout)
		outputs = append(outputs, res.stdout)

		if strings.HasSuffix(line, "&") {
			// Only etcd runs in the background (quickStartCommand sees to it); the next
			// command needs it serving.
			addr := regexp.MustCompile(`--listen-client-urls http://(\S+)`).FindStringSubmatch(line)[1]
			waitEtcd(t, filepath.Join(tools, "etcdctl"), addr, sh.dir+"/"+strconv.Itoa(sh.n)+".err")
		}
		got := splitOutput(res.stdout)
		wantFail := len(st.want) > 0 && strings.HasPrefix(st.want[0], "etcdguard: ")
		if wantFail {
			// The README shows the error line etcdguard prints on stderr, without its log lines.
			got = nil
			for _, l := range splitOutput(res.stderr) {
				if strings.HasPrefix(l, "etcdguard: ") {
					got = append(got, l)
				}
			}
			fmt.Fprintf(&transcript, "%s(exit status %d)\n", strings.Join(append(got, ""), "\n"), res.code)
			if res.code == 0 {
				t.Fatalf("%s: exit status 0, but the README shows it refused:\n%s", where, strings.Join(st.want, "\n"))
			}
			if res.stdout != "" {
				t.Errorf("%s: printed on stdout, where the README shows nothing:\n%s", where, res.stdout)
			}
		} else if res.code != 0 {
			t.Fatalf("%s: exit status %d\nstdout:\n%s\nstderr:\n%s", where, res.code, res.stdout, res.stderr)
		}
		for i := range got {
			got[i] = m.toReadme(got[i])
		}
		want, have := readmeN.normalize(st.want), realN.normalize(got)
		if d := lineDiff(want, have); d != "" {
			t.Errorf("%s: the output differs from the README's (- README, + real, after normalising ids, times, sizes and padding):\n%s", where, d)
		}
	}
	t.Logf("the quick start's %d commands ran in %.1fs", len(steps), time.Since(start).Seconds())
}

// quickStartCommand maps a README command to the one the test runs: /tmp/qs and the
// fixed ports moved, ids the README took from earlier output replaced by the real ones
// at the same place, and the flags the README elides with ... filled in from what the
// restore printed. It refuses what the mapping does not cover, so the test cannot run a
// changed README differently from what it says.
func quickStartCommand(cmd string, m quickStartMap, readme, got *qsNormalizer, outputs []string) (string, error) {
	for _, p := range qsPortOrHost.FindAllString(cmd, -1) {
		if p != ":12379" && p != ":12380" {
			return "", fmt.Errorf("names %q: the test maps only 127.0.0.1:12379 and 127.0.0.1:12380 to free ports", p)
		}
	}
	if strings.Contains(cmd, "ENDPOINTS") {
		return "", fmt.Errorf("sets the endpoints in the environment, which the test does to move etcd off its default port")
	}
	if strings.Contains(strings.ReplaceAll(cmd, "/tmp/qs", ""), "/tmp") {
		return "", fmt.Errorf("uses a path in /tmp other than /tmp/qs, which the test does not move")
	}
	for kind, re := range map[string]*regexp.Regexp{"id": qsSnapshotID, "plan": qsPlanID, "token": qsClusterToken} {
		var err error
		cmd = re.ReplaceAllStringFunc(cmd, func(v string) string {
			i := readme.index(kind, v)
			if i < 0 || i >= len(got.seen[kind]) {
				err = fmt.Errorf("%s is not in the README's output above it, so the test cannot tell which real one it stands for", v)
				return v
			}
			return got.seen[kind][i]
		})
		if err != nil {
			return "", err
		}
	}
	line := m.toHere(cmd)
	switch {
	case qsDefaultEtcd.MatchString(cmd):
		// etcd on its defaults (name default, 2379 and 2380 on localhost), on free ports.
		line = strings.TrimSuffix(line, "&") + fmt.Sprintf("--listen-client-urls %[1]s --advertise-client-urls %[1]s --listen-peer-urls %[2]s --initial-advertise-peer-urls %[2]s --initial-cluster default=%[2]s &",
			m.url("2379"), m.url("2380"))
	case qsElidedEtcd.MatchString(cmd):
		name := qsElidedEtcd.FindStringSubmatch(cmd)[1]
		flags, err := printedEtcdFlags(name, outputs)
		if err != nil {
			return "", err
		}
		have := map[string]bool{}
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "--") {
				have[f] = true
			}
		}
		var rest []string
		for i := 0; i+1 < len(flags); i += 2 {
			if !have[flags[i]] {
				rest = append(rest, flags[i], flags[i+1])
			}
		}
		line = strings.Replace(line, " ... &", " "+strings.Join(rest, " ")+" &", 1)
	case strings.HasPrefix(cmd, "etcd "), strings.HasSuffix(cmd, "&"):
		return "", fmt.Errorf("the test runs in the background only `etcd --data-dir DIR &` and `etcd --name NAME ... &` (its flags elided)")
	}
	if strings.Contains(line, "...") {
		return "", fmt.Errorf("elides something with ... that the test cannot fill in")
	}
	return line, nil
}

// printedEtcdFlags returns the flags the newest restore printed for member name, as
// flag-value pairs.
func printedEtcdFlags(name string, outputs []string) ([]string, error) {
	for i := len(outputs) - 1; i >= 0; i-- {
		if !strings.Contains(outputs[i], "start each member on its host with these flags") {
			continue
		}
		for _, l := range strings.Split(outputs[i], "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == "etcd" && f[1] == "--name" && f[2] == name {
				if len(f)%2 == 0 {
					return nil, fmt.Errorf("the restore printed flags that are not flag-value pairs: %q", l)
				}
				return f[1:], nil
			}
		}
		return nil, fmt.Errorf("the restore printed no etcd flags for member %s", name)
	}
	return nil, fmt.Errorf("elides flags with ..., but no command before it printed the flags to start a restored member with")
}

func splitOutput(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// lineDiff returns the lines of want and got side by side from the first that differs,
// or "" if they are the same.
func lineDiff(want, got []string) string {
	if strings.Join(want, "\n") == strings.Join(got, "\n") && len(want) == len(got) {
		return ""
	}
	var b strings.Builder
	for i := 0; i < max(len(want), len(got)); i++ {
		w, g := "", ""
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		switch {
		case i < len(want) && i < len(got) && w == g:
			fmt.Fprintf(&b, "  %s\n", w)
		default:
			if i < len(want) {
				fmt.Fprintf(&b, "- %s\n", w)
			}
			if i < len(got) {
				fmt.Fprintf(&b, "+ %s\n", g)
			}
		}
	}
	return b.String()
}
