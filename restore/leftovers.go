package restore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A restore writes hidden siblings of each target (a temp data dir, the downloaded
// snapshot) named .<target>.etcdguard-<owner>-<random>, and holds an flock on
// .<target>.etcdguard-<owner>.lock while they exist. A later restore tells a killed one's
// leftovers from a running one's by that lock, which the kernel drops with the process:
// a PID in the name could not tell, as a restore run in a container has its own PID
// namespace (there it is PID 1, which always exists here, and a live restore's PID may
// not exist here at all).

// owner is one restore's claim on the names it creates beside its targets.
type owner struct {
	id    string
	locks []*os.File // each renamed to its final name after it was locked
	paths []string   // their final names
}

// ownerID matches the ids newOwner makes.
var ownerID = regexp.MustCompile(`^r[0-9a-f]{12}$`)

func newOwner() *owner {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &owner{id: "r" + hex.EncodeToString(b[:])} // never all digits, which the names of PIDs were
}

func leftoverPrefix(target string) (parent, prefix string) {
	target = filepath.Clean(target)
	return filepath.Dir(target), "." + filepath.Base(target) + ".etcdguard-"
}

// pendingPrefix names lock files not yet renamed to prefix+id+".lock": no restore takes
// them for a restore's names.
func pendingPrefix(prefix string) string { return strings.TrimSuffix(prefix, "-") + "~" }

// claim locks the names beside target for this restore, before any is created. The lock
// file is created under a name no restore looks at, locked, then renamed: another restore
// never finds it unlocked while this one lives.
func (o *owner) claim(target string) error {
	parent, prefix := leftoverPrefix(target)
	final := filepath.Join(parent, prefix+o.id+".lock")
	pending := filepath.Join(parent, pendingPrefix(prefix)+o.id)
	f, err := os.OpenFile(pending, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("creating the restore's lock beside %s: %w", target, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		os.Remove(pending)
		return fmt.Errorf("locking %s: %w", pending, err)
	}
	if err := os.Rename(pending, final); err != nil {
		f.Close()
		os.Remove(pending)
		return fmt.Errorf("creating the restore's lock %s: %w", final, err)
	}
	o.locks, o.paths = append(o.locks, f), append(o.paths, final)
	return nil
}

// release removes the lock files; by then every name they guarded is gone or renamed.
func (o *owner) release() {
	for i, f := range o.locks {
		if err := os.Remove(o.paths[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			slog.Warn("could not remove the restore's lock file", "path", o.paths[i], "err", err)
		}
		f.Close()
	}
	o.locks, o.paths = nil, nil
}

// tempName is a hidden sibling of target, on the same filesystem so the final rename is
// atomic, under this restore's claim.
func (o *owner) tempName(target string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	parent, prefix := leftoverPrefix(target)
	return filepath.Join(parent, prefix+o.id+"-"+hex.EncodeToString(b[:]))
}

// removeLeftovers removes what restores into target that were killed (kill -9, a power
// cut) left beside it: a hidden data dir as big as the snapshot plus a 64 MiB WAL, and
// the downloaded snapshot. Nothing else ever would, and each retry after a crash would
// leave more, until the disk is too full to restore. What a live restore holds the lock
// of stays; a failure to remove something is logged, not fatal.
func removeLeftovers(ctx context.Context, target string) {
	parent, prefix := leftoverPrefix(target)
	des, err := os.ReadDir(parent)
	if err != nil {
		return // no parent, no leftovers; an unreadable one fails the restore later, with its name
	}
	byOwner := map[string][]string{}
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, pendingPrefix(prefix)) {
			// A lock file a restore was killed before renaming, or one it is about to lock.
			if info, err := de.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
				removeUnlocked(ctx, filepath.Join(parent, name), nil)
			}
			continue
		}
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		id, _, named := strings.Cut(rest, "-")
		if !named {
			id, named = strings.CutSuffix(rest, ".lock")
		}
		if _, err := strconv.Atoi(id); !named || err != nil && !ownerID.MatchString(id) {
			continue // not named by a restore: cannot tell, kept
		}
		byOwner[id] = append(byOwner[id], filepath.Join(parent, name))
	}
	for id, paths := range byOwner {
		lock := filepath.Join(parent, prefix+id+".lock")
		if pid, err := strconv.Atoi(id); err == nil {
			// Named by an older etcdguard after its PID: only that can tell.
			if pid > 0 && !processExists(pid) {
				removeAll(ctx, paths)
			}
			continue
		}
		if _, err := os.Stat(lock); errors.Is(err, os.ErrNotExist) {
			removeAll(ctx, paths) // its restore ended and could not remove these
			continue
		}
		removeUnlocked(ctx, lock, paths)
	}
}

// removeUnlocked removes paths, then lock, if lock can be locked: no live restore holds it.
func removeUnlocked(ctx context.Context, lock string, paths []string) {
	f, err := os.OpenFile(lock, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return // a running restore's
	}
	var others []string
	for _, p := range paths {
		if p != lock {
			others = append(others, p)
		}
	}
	removeAll(ctx, others)
	removeAll(ctx, []string{lock})
}

func removeAll(ctx context.Context, paths []string) {
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			slog.WarnContext(ctx, "could not remove what a killed restore left", "path", p, "err", err)
			continue
		}
		slog.InfoContext(ctx, "removed what a killed restore left", "path", p)
	}
}

func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
