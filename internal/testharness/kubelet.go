package testharness

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
//
// A container's securityContext (the pod's for what the container leaves unset), as far
// as a process without namespaces can have it:
//   - runAsUser and runAsGroup are the process's uid and gid (no supplementary groups),
//     as root does; a test that is not root cannot switch, and a pod asking for another
//     uid than the test's fails to start rather than run as the wrong user. Unset, the
//     process runs as the test does (the stand-in cannot read the image's USER).
//     runAsNonRoot refuses a uid 0 the way kubelet does.
//   - readOnlyRootFilesystem: TMPDIR (unless a volume is mounted at /tmp: then that
//     volume, as in the container) and HOME (unless the manifest sets it) lie under a
//     regular file, so creating anything there fails even as root; the working directory
//     (the container's /) is a dir of its own, and a container that leaves anything in it
//     fails the test. Writes to absolute paths outside the mounts reach this machine's
//     own files and are not caught.
//   - allowPrivilegeEscalation: false sets no_new_privs on the process (prctl on a locked
//     thread that forks it: SysProcAttr has no field for it).
//   - capabilities: every name is checked (an unknown one fails the start, as containerd
//     does), and adding SYS_ADMIN with allowPrivilegeEscalation: false is refused, as the
//     API server does; they are not applied: a root process keeps all of them.
//   - privileged, seccompProfile, SELinux and AppArmor options, procMount and
//     sysctls are not simulated.
type Kubelet struct {
	opts      KubeletOptions
	dir       string
	CrictlDir string

	mu   sync.Mutex
	pods map[string]*staticPod // by manifest file name
	// wrote lists what containers with a read-only root left in their root, for the test.
	wrote  []string
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
	// Not t.TempDir (mode 0700): a container may run as another uid, and must reach its
	// volumes, its root and the programs of its command as that uid.
	dir, err := os.MkdirTemp("", "kubelet-"+opts.Node+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	k := &Kubelet{opts: opts, dir: dir, pods: map[string]*staticPod{}, quit: make(chan struct{}), done: make(chan struct{})}
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
		k.mu.Lock()
		for _, w := range k.wrote {
			t.Errorf("kubelet %s: %s", opts.Node, w)
		}
		k.mu.Unlock()
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
	l, err := k.command(p, c)
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
	cmd := exec.Command(l.argv[0], l.argv[1:]...)
	cmd.Env = l.env
	cmd.Dir = l.root
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = killWithParent()
	cmd.SysProcAttr.Credential = l.cred
	done := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		if l.noNewPrivs {
			// no_new_privs is a thread's and is inherited by what it forks: this thread
			// forks the container and is never unlocked, so nothing else runs on it. Nor
			// does it ever end: a locked thread ends with its goroutine, and the kernel then
			// kills every child whose Pdeathsig ties it to that thread, including servers
			// other goroutines forked from it before the lock (a test's MinIO died when a
			// static pod stopped).
			runtime.LockOSThread()
			defer func() { select {} }()
			if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetNoNewPrivs, 1, 0); errno != 0 {
				started <- fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS) for allowPrivilegeEscalation: false: %w", errno)
				return
			}
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		k.waitContainer(cmd, c, l, logf, done)
	}()
	if err := <-started; err != nil {
		fmt.Fprintf(logf, "kubelet: cannot start: %v\n", err)
		logf.Close()
		c.backOff()
		c.done = done
		close(done)
		return
	}
	c.proc, c.done, c.stopping, c.stopAt = cmd.Process, done, false, time.Time{}
}

// prSetNoNewPrivs is PR_SET_NO_NEW_PRIVS of prctl(2).
const prSetNoNewPrivs = 38

// waitContainer records how a container ended and what it left in a read-only root.
func (k *Kubelet) waitContainer(cmd *exec.Cmd, c *container, l launch, logf *os.File, done chan struct{}) {
	err := cmd.Wait()
	k.mu.Lock()
	defer close(done)
	defer k.mu.Unlock()
	exit := "exited"
	if err != nil {
		exit = err.Error()
	}
	if !c.stopAt.IsZero() {
		exit += fmt.Sprintf(" %.1fs after SIGTERM", time.Since(c.stopAt).Seconds())
	}
	fmt.Fprintf(logf, "kubelet: %s\n", exit)
	if left, _ := os.ReadDir(l.root); l.readOnlyRoot && len(left) > 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		w := fmt.Sprintf("container %s (%s) has readOnlyRootFilesystem but wrote %v in its root, outside its volumes", c.spec.Name, c.id, names)
		k.wrote = append(k.wrote, w)
		fmt.Fprintf(logf, "kubelet: %s\n", w)
	}
	logf.Close()
	if !c.stopping {
		c.backOff()
	}
	c.stopping = false
}

// launch is how a container's process starts here.
type launch struct {
	argv, env    []string
	root         string // the container's /, its working directory
	readOnlyRoot bool
	cred         *syscall.Credential // nil: as the test runs
	noNewPrivs   bool
}

// command maps a container's command to here: its hostPath mounts to where the node's
// paths are here, emptyDir mounts to a dir of the pod, and the node's addresses; and
// applies its securityContext (see Kubelet).
func (k *Kubelet) command(p *staticPod, c *container) (launch, error) {
	var l launch
	sec, err := securityOf(p.pod.Spec.SecurityContext, c.spec.SecurityContext)
	if err != nil {
		return l, err
	}
	l.cred, l.noNewPrivs, l.readOnlyRoot = sec.cred, sec.noNewPrivs, sec.readOnlyRoot
	var mounts []mount
	for _, m := range c.spec.VolumeMounts {
		i := slices.IndexFunc(p.pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			return l, fmt.Errorf("volume %q not found", m.Name)
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
					return l, err
				}
			} else if fi, err := os.Stat(to); typ == corev1.HostPathDirectory && (err != nil || !fi.IsDir()) {
				return l, fmt.Errorf("hostPath %s of volume %q is not a directory", v.HostPath.Path, v.Name)
			} else if typ == corev1.HostPathFile && (err != nil || !fi.Mode().IsRegular()) {
				return l, fmt.Errorf("hostPath %s of volume %q is not a file", v.HostPath.Path, v.Name)
			}
		case v.EmptyDir != nil:
			to = filepath.Join(k.dir, "volumes", p.pod.Name, v.Name)
			if err := os.MkdirAll(to, 0o755); err != nil {
				return l, err
			}
			// kubelet makes an emptyDir writable by every uid the pod may run as.
			if err := os.Chmod(to, 0o777); err != nil {
				return l, err
			}
		default:
			return l, fmt.Errorf("volume %q: only hostPath and emptyDir are simulated", v.Name)
		}
		mounts = append(mounts, mount{strings.TrimSuffix(m.MountPath, "/"), to})
	}
	// The longest mount path first, so /etc/kubernetes/pki/etcd wins over /etc/kubernetes.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].from) > len(mounts[j].from) })
	mapArg := func(s string) string { return mapPaths(k.opts.Addr(s), mounts) }
	all := append(append([]string{}, c.spec.Command...), c.spec.Args...)
	if len(all) == 0 {
		return l, fmt.Errorf("container %q has no command", c.spec.Name)
	}
	l.argv = []string{k.opts.Binary(c.spec.Image, all[0])}
	for _, a := range all[1:] {
		l.argv = append(l.argv, mapArg(a))
	}
	// The container's root: empty, and a new one at each start, as a new container's
	// writable layer is.
	l.root = filepath.Join(k.dir, "rootfs", c.id)
	if err := os.MkdirAll(l.root, 0o755); err != nil {
		return l, err
	}
	home, tmp := l.root, ""
	if l.readOnlyRoot {
		// Under a regular file: creating anything there fails, for root too.
		ro := filepath.Join(k.dir, "read-only-root")
		if err := os.WriteFile(ro, []byte("a container's read-only root filesystem\n"), 0o444); err != nil {
			return l, err
		}
		home, tmp = filepath.Join(ro, "root"), filepath.Join(ro, "tmp")
		if err := os.Chmod(l.root, 0o555); err != nil {
			return l, err
		}
	}
	if i := slices.IndexFunc(mounts, func(m mount) bool { return m.from == "/tmp" }); i >= 0 {
		tmp = mounts[i].to
	}
	l.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	if tmp != "" {
		l.env = append(l.env, "TMPDIR="+tmp)
	}
	l.env = append(l.env, k.opts.Env...)
	for _, e := range c.spec.Env {
		l.env = append(l.env, e.Name+"="+mapArg(e.Value))
	}
	return l, nil
}

// security is what the stand-in applies of a container's securityContext.
type security struct {
	cred         *syscall.Credential
	noNewPrivs   bool
	readOnlyRoot bool
}

// securityOf resolves a container's securityContext over its pod's, as kubelet does, and
// refuses what kubelet, the API server or the runtime would refuse, or what it cannot do
// here. See Kubelet for what is honoured.
func securityOf(pod *corev1.PodSecurityContext, c *corev1.SecurityContext) (security, error) {
	var out security
	var uid, gid *int64
	var nonRoot *bool
	if pod != nil {
		uid, gid, nonRoot = pod.RunAsUser, pod.RunAsGroup, pod.RunAsNonRoot
	}
	if c == nil {
		c = &corev1.SecurityContext{}
	}
	if c.RunAsUser != nil {
		uid = c.RunAsUser
	}
	if c.RunAsGroup != nil {
		gid = c.RunAsGroup
	}
	if c.RunAsNonRoot != nil {
		nonRoot = c.RunAsNonRoot
	}
	if caps := c.Capabilities; caps != nil {
		for _, list := range [][]corev1.Capability{caps.Add, caps.Drop} {
			for _, name := range list {
				if n := strings.ToUpper(string(name)); n != "ALL" && !slices.Contains(capabilityNames, n) {
					return out, fmt.Errorf("securityContext: unknown capability %q (names as in capabilities(7), without CAP_)", name)
				}
			}
		}
	}
	if ape := c.AllowPrivilegeEscalation; ape != nil && !*ape {
		if c.Privileged != nil && *c.Privileged {
			return out, errors.New("securityContext: allowPrivilegeEscalation: false with privileged: true is invalid")
		}
		if c.Capabilities != nil && slices.ContainsFunc(c.Capabilities.Add, func(n corev1.Capability) bool { return strings.ToUpper(string(n)) == "SYS_ADMIN" }) {
			return out, errors.New("securityContext: allowPrivilegeEscalation: false with capability SYS_ADMIN added is invalid")
		}
		out.noNewPrivs = true
	}
	out.readOnlyRoot = c.ReadOnlyRootFilesystem != nil && *c.ReadOnlyRootFilesystem
	if gid != nil && uid == nil {
		return out, errors.New("securityContext: runAsGroup without runAsUser needs the image's USER, which the kubelet stand-in cannot read")
	}
	me := os.Geteuid()
	effective := int64(me)
	if uid != nil {
		effective = *uid
	}
	if nonRoot != nil && *nonRoot && effective == 0 {
		return out, errors.New("securityContext: runAsNonRoot, but the container would run as uid 0")
	}
	if uid != nil {
		g := int64(0) // a uid the image does not name gets gid 0 from the runtime
		if gid != nil {
			g = *gid
		}
		if *uid < 0 || *uid > math.MaxUint32 || g < 0 || g > math.MaxUint32 {
			return out, fmt.Errorf("securityContext: runAsUser %d, runAsGroup %d out of range", *uid, g)
		}
		switch {
		case me == 0:
			out.cred = &syscall.Credential{Uid: uint32(*uid), Gid: uint32(g), Groups: []uint32{}}
		case *uid != int64(me) || g != int64(os.Getegid()):
			return out, fmt.Errorf("securityContext: runAsUser %d, runAsGroup %d: the kubelet stand-in runs as uid %d, gid %d and cannot switch; run the test as root", *uid, g, me, os.Getegid())
		}
	}
	return out, nil
}

// capabilityNames are Linux's capabilities as a securityContext names them.
var capabilityNames = []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE",
	"SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN",
	"SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"}

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
