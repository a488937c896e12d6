package testharness

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// KubeletOptions describe one simulated node.
type KubeletOptions struct {
	Node      string
	Manifests string // where the node's /etc/kubernetes/manifests is here
	// Path maps a path on the node (a hostPath volume's) to where it is here.
	Path func(nodePath string) string
	// Addr maps the node's addresses in a container's arguments and environment to
	// the loopback addresses that stand for them here.
	Addr func(string) string
	// Binary is the program here for a container's command, from its image.
	Binary func(image, command string) string
	// Env is given to every container, as a node gives its IAM role to every process.
	Env []string
}

// Kubelet stands in for the kubelet of one node: it runs the static pods of a manifest
// dir as processes, as kubelet does (it starts a pod whose file appears, restarts a
// container that exits with a growing back-off, stops a pod whose file goes away or
// changes with its grace period, creates DirectoryOrCreate hostPath dirs and refuses
// Directory and File ones that are not one). CrictlDir
// holds crictl and systemctl stand-ins that read and steer it, for a PATH.
type Kubelet struct {
	opts      KubeletOptions
	dir       string
	CrictlDir string

	mu     sync.Mutex
	pods   map[string]*staticPod // by manifest file name
	nextID int
	quit   chan struct{}
	done   chan struct{}
}

type staticPod struct {
	hash       string
	pod        corev1.Pod
	containers []*container
	removed    bool
}

type container struct {
	spec     corev1.Container
	id       string
	proc     *os.Process
	done     chan struct{}
	attempt  int
	stopAt   time.Time // when it was sent SIGTERM
	notStart time.Time // back-off
	stopping bool
}

// StartKubelet starts the stand-in; it stops every container when the test ends.
func StartKubelet(t testing.TB, opts KubeletOptions) *Kubelet {
	t.Helper()
	k := &Kubelet{opts: opts, dir: t.TempDir(), pods: map[string]*staticPod{}, quit: make(chan struct{}), done: make(chan struct{})}
	k.CrictlDir = filepath.Join(k.dir, "bin")
	if err := os.MkdirAll(filepath.Join(k.dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(k.CrictlDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, script := range map[string]string{"crictl": crictlScript, "systemctl": systemctlScript} {
		script = strings.ReplaceAll(script, "@STATE@", k.dir)
		if err := os.WriteFile(filepath.Join(k.CrictlDir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	go k.loop(t)
	t.Cleanup(func() {
		close(k.quit)
		<-k.done
		if t.Failed() {
			t.Logf("%s: containers run:\n%s", opts.Node, k.Logs())
		}
	})
	return k
}

func (k *Kubelet) loop(t testing.TB) {
	defer close(k.done)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-k.quit:
			k.stopAll()
			return
		case <-tick.C:
		}
		k.sync(t)
	}
}

// sync does one round of what kubelet does with static pods.
func (k *Kubelet) sync(t testing.TB) {
	k.mu.Lock()
	defer k.mu.Unlock()
	// crictl rm -f: stop the container; the pod's file is still there, so it starts again.
	// Renamed before it is read, so an id crictl appends meanwhile goes to a new file.
	if os.Rename(filepath.Join(k.dir, "rm"), filepath.Join(k.dir, "rm.taken")) == nil {
		b, _ := os.ReadFile(filepath.Join(k.dir, "rm.taken"))
		for _, id := range strings.Fields(string(b)) {
			for _, p := range k.pods {
				for _, c := range p.containers {
					if c.id == id {
						k.stop(c, p, 0)
					}
				}
			}
		}
	}
	seen := map[string]bool{}
	entries, _ := os.ReadDir(k.opts.Manifests)
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(k.opts.Manifests, e.Name()))
		if err != nil {
			continue
		}
		seen[e.Name()] = true
		hash := fmt.Sprintf("%x", sha256.Sum256(b))
		if p := k.pods[e.Name()]; p != nil && p.hash == hash {
			continue
		} else if p != nil {
			k.remove(p) // a changed manifest: the old pod goes, the new one comes once it has
			continue
		}
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(b, &pod); err != nil {
			t.Logf("%s: kubelet: %s is not a pod: %v", k.opts.Node, e.Name(), err)
			continue
		}
		p := &staticPod{hash: hash, pod: pod}
		for _, c := range pod.Spec.Containers {
			p.containers = append(p.containers, &container{spec: c})
		}
		k.pods[e.Name()] = p
	}
	for file, p := range k.pods {
		if !seen[file] {
			k.remove(p)
		}
		if p.removed {
			if !slices.ContainsFunc(p.containers, (*container).running) {
				delete(k.pods, file)
			}
			continue
		}
		for _, c := range p.containers {
			if !c.running() && !c.stopping && time.Now().After(c.notStart) {
				k.start(t, p, c)
			}
		}
	}
	k.writeState()
}

// backOff delays the next start after a crash, like kubelet's CrashLoopBackOff (shorter).
func (c *container) backOff() {
	c.notStart = time.Now().Add(min(time.Duration(c.attempt)*time.Second, 10*time.Second))
}

func (c *container) running() bool {
	if c.done == nil {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

func (k *Kubelet) start(t testing.TB, p *staticPod, c *container) {
	k.nextID++
	c.id = fmt.Sprintf("%s%04d%s", k.opts.Node, k.nextID, c.spec.Name)
	c.attempt++
	argv, env, err := k.command(p, c)
	logPath := filepath.Join(k.dir, "logs", c.id+".log")
	logf, ferr := os.Create(logPath)
	if ferr != nil {
		t.Errorf("kubelet %s: %v", k.opts.Node, ferr)
		return
	}
	if err != nil {
		fmt.Fprintf(logf, "kubelet: cannot start: %v\n", err)
		logf.Close()
		c.backOff()
		c.done = make(chan struct{})
		close(c.done)
		return
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = k.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = killWithParent()
	done := make(chan struct{})
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(logf, "kubelet: cannot start: %v\n", err)
		logf.Close()
		c.backOff()
		c.done = done
		close(done)
		return
	}
	c.proc, c.done, c.stopping, c.stopAt = cmd.Process, done, false, time.Time{}
	go func() {
		err := cmd.Wait()
		k.mu.Lock()
		exit := "exited"
		if err != nil {
			exit = err.Error()
		}
		if !c.stopAt.IsZero() {
			exit += fmt.Sprintf(" %.1fs after SIGTERM", time.Since(c.stopAt).Seconds())
		}
		fmt.Fprintf(logf, "kubelet: %s\n", exit)
		logf.Close()
		if !c.stopping {
			c.backOff()
		}
		c.stopping = false
		k.mu.Unlock()
		close(done)
	}()
}

// command maps a container's command to here: its hostPath mounts to where the node's
// paths are here, emptyDir mounts to a dir of the pod, and the node's addresses.
func (k *Kubelet) command(p *staticPod, c *container) (argv, env []string, err error) {
	var mounts []mount
	for _, m := range c.spec.VolumeMounts {
		i := slices.IndexFunc(p.pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			return nil, nil, fmt.Errorf("volume %q not found", m.Name)
		}
		v := p.pod.Spec.Volumes[i]
		var to string
		switch {
		case v.HostPath != nil:
			to = k.opts.Path(v.HostPath.Path)
			typ := corev1.HostPathUnset
			if v.HostPath.Type != nil {
				typ = *v.HostPath.Type
			}
			if typ == corev1.HostPathDirectoryOrCreate {
				if err := os.MkdirAll(to, 0o755); err != nil {
					return nil, nil, err
				}
			} else if fi, err := os.Stat(to); typ == corev1.HostPathDirectory && (err != nil || !fi.IsDir()) {
				return nil, nil, fmt.Errorf("hostPath %s of volume %q is not a directory", v.HostPath.Path, v.Name)
			} else if typ == corev1.HostPathFile && (err != nil || !fi.Mode().IsRegular()) {
				return nil, nil, fmt.Errorf("hostPath %s of volume %q is not a file", v.HostPath.Path, v.Name)
			}
		case v.EmptyDir != nil:
			to = filepath.Join(k.dir, "volumes", p.pod.Name, v.Name)
			if err := os.MkdirAll(to, 0o755); err != nil {
				return nil, nil, err
			}
		default:
			return nil, nil, fmt.Errorf("volume %q: only hostPath and emptyDir are simulated", v.Name)
		}
		mounts = append(mounts, mount{strings.TrimSuffix(m.MountPath, "/"), to})
	}
	// The longest mount path first, so /etc/kubernetes/pki/etcd wins over /etc/kubernetes.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].from) > len(mounts[j].from) })
	mapArg := func(s string) string { return mapPaths(k.opts.Addr(s), mounts) }
	all := append(append([]string{}, c.spec.Command...), c.spec.Args...)
	if len(all) == 0 {
		return nil, nil, fmt.Errorf("container %q has no command", c.spec.Name)
	}
	argv = []string{k.opts.Binary(c.spec.Image, all[0])}
	for _, a := range all[1:] {
		argv = append(argv, mapArg(a))
	}
	env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + k.dir}, k.opts.Env...)
	for _, e := range c.spec.Env {
		env = append(env, e.Name+"="+mapArg(e.Value))
	}
	return argv, env, nil
}

type mount struct{ from, to string }

// mapPaths replaces, in one pass, each mount's path where it stands as a whole path or
// a path's prefix (after a flag's =, a comma or a space), the longest mount first.
func mapPaths(s string, mounts []mount) string {
	const sep = "/,:= \"'"
	var b strings.Builder
	for i := 0; i < len(s); {
		j := -1
		if i == 0 || strings.ContainsRune(sep[1:], rune(s[i-1])) {
			j = slices.IndexFunc(mounts, func(m mount) bool {
				end := i + len(m.from)
				return strings.HasPrefix(s[i:], m.from) && (end == len(s) || strings.ContainsRune(sep, rune(s[end])))
			})
		}
		if j < 0 {
			b.WriteByte(s[i])
			i++
			continue
		}
		b.WriteString(mounts[j].to)
		i += len(mounts[j].from)
	}
	return b.String()
}

// remove stops a pod whose file went away, with its grace period.
func (k *Kubelet) remove(p *staticPod) {
	p.removed = true
	grace := 30 * time.Second
	if g := p.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	for _, c := range p.containers {
		k.stop(c, p, grace)
	}
}

func (k *Kubelet) stop(c *container, p *staticPod, grace time.Duration) {
	if !c.running() || c.stopping {
		return
	}
	c.stopping, c.stopAt = true, time.Now()
	c.notStart = time.Time{}
	proc, done := c.proc, c.done
	_ = proc.Signal(syscall.SIGTERM)
	go func() {
		select {
		case <-done:
		case <-time.After(grace):
			_ = proc.Kill()
		}
	}()
}

func (k *Kubelet) stopAll() {
	k.mu.Lock()
	var dones []chan struct{}
	for _, p := range k.pods {
		for _, c := range p.containers {
			if c.running() {
				k.stop(c, p, 5*time.Second)
				dones = append(dones, c.done)
			}
		}
	}
	k.mu.Unlock()
	for _, d := range dones {
		<-d
	}
}

// writeState writes what crictl ps shows: one line per container, id, state, name, pod,
// attempt and log.
func (k *Kubelet) writeState() {
	var lines []string
	for _, p := range k.pods {
		for _, c := range p.containers {
			if c.id == "" {
				continue
			}
			state := "Running"
			if !c.running() {
				state = "Exited"
			}
			lines = append(lines, fmt.Sprintf("%s\t%s\t%s\t%s-%s\t%d\t%s", c.id, state, c.spec.Name, p.pod.Name, k.opts.Node,
				c.attempt-1, filepath.Join(k.dir, "logs", c.id+".log")))
		}
	}
	sort.Strings(lines)
	tmp := filepath.Join(k.dir, "containers.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err == nil {
		os.Rename(tmp, filepath.Join(k.dir, "containers"))
	}
}

// Logs returns the tail of each container's log, for a failing test.
func (k *Kubelet) Logs() string {
	paths, _ := filepath.Glob(filepath.Join(k.dir, "logs", "*.log"))
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(p), tail(p))
	}
	return b.String()
}

// crictlScript answers the crictl commands the runbook uses (ps with --name, -q and -a;
// logs; rm -f) from the stand-in's state, since no container runtime runs here.
const crictlScript = `#!/bin/bash
set -euo pipefail
state=@STATE@
cmd=${1:-}; shift || true
case "$cmd" in
ps)
	quiet=0 all=0 name=
	while [ $# -gt 0 ]; do
		case "$1" in
		-q|--quiet) quiet=1 ;;
		-a|--all) all=1 ;;
		--name) name=$2; shift ;;
		--name=*) name=${1#--name=} ;;
		*) echo "crictl (test stand-in): ps $1 is not simulated" >&2; exit 2 ;;
		esac
		shift
	done
	[ $quiet = 1 ] || printf 'CONTAINER\tSTATE\tNAME\tPOD\tATTEMPT\n'
	while IFS=$'\t' read -r id st nm pod attempt log; do
		[ -n "$id" ] || continue
		[ $all = 1 ] || [ "$st" = Running ] || continue
		[ -z "$name" ] || [[ "$nm" =~ $name ]] || continue
		if [ $quiet = 1 ]; then echo "$id"; else printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$st" "$nm" "$pod" "$attempt"; fi
	done < "$state/containers"
	;;
logs)
	[ "${1:-}" != -f ] || shift
	cat "$state/logs/$1.log"
	;;
rm)
	[ "${1:-}" != -f ] || shift
	for id in "$@"; do echo "$id" >> "$state/rm"; done
	;;
*)
	echo "crictl (test stand-in): $cmd is not simulated" >&2; exit 2 ;;
esac
`

// systemctlScript accepts what the runbook asks of systemd on a master: restarting
// kubelet, which leaves static pods running (as the real one does).
const systemctlScript = `#!/bin/bash
if [ "$*" = "restart kubelet" ]; then echo "$(date -u +%FT%TZ) restart kubelet" >> @STATE@/systemctl.log; exit 0; fi
echo "systemctl (test stand-in): $* is not simulated" >&2
exit 2
`
