// Package restore writes fresh etcd members' data dirs from a stored snapshot: pick a
// snapshot (id, latest, time or revision), download and verify it completely, then let
// etcd's own restore library write each member into a temp dir beside its target and
// rename it into place. Nothing appears at a target path unless the whole restore worked.
package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	etcdutl "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Options configures Restore.
type Options struct {
	Members        []Member // from MemberPlan.Members
	InitialCluster string
	Token          string // --initial-cluster-token; NewToken() if empty
	// BumpRevision and MarkCompacted go together (etcdutl requires the pair): the restored
	// revision jumps ahead and everything before it reads as compacted, so Kubernetes
	// watchers and caches never see revisions go back in time.
	BumpRevision  uint64
	MarkCompacted bool
	// Deltas, if set, are replayed onto the snapshot up to TargetRev, or up to the last
	// revision captured at or before TargetTime (point-in-time restore).
	Deltas     []*delta.Manifest
	TargetRev  int64
	TargetTime time.Time
	// Chosen says that the snapshot was chosen for the point asked (--at, --revision,
	// --snapshot latest), not named by its id: when it turns out corrupt, the failed
	// verification is recorded and a second run chooses the next older one.
	Chosen bool
}

// Result is what was restored; its JSON form is `restore -o json`.
type Result struct {
	Snapshot *snapshot.Manifest `json:"snapshot"`
	Replayed *Replayed          `json:"replayed,omitempty"`  // deltas applied after the snapshot
	Revision int64              `json:"revision"`            // what the restored members start at
	KeyCount *int64             `json:"key_count,omitempty"` // from the manifest

	InitialCluster string         `json:"initial_cluster"`
	Token          string         `json:"initial_cluster_token"`
	Members        []MemberResult `json:"members"`
}

// MemberResult is one written member and how to start it.
type MemberResult struct {
	Member
	Command []string `json:"etcd_command"`
}

// walSegment is what etcd preallocates for its first WAL file in every member.
const walSegment = 64 << 20

// Restore downloads and verifies the snapshot m, then writes every member's data dir.
func Restore(ctx context.Context, st store.Store, m *snapshot.Manifest, opts Options) (res *Result, err error) {
	if len(opts.Members) == 0 {
		return nil, errors.New("no members to restore")
	}
	if (opts.BumpRevision > 0) != opts.MarkCompacted {
		return nil, errors.New("--bump-revision and --mark-compacted go together: give both (etcd's restore requires the pair)")
	}
	if err := CheckToken(opts.Members, opts.InitialCluster, opts.Token); err != nil {
		return nil, err
	}
	if opts.Token == "" {
		opts.Token = NewToken()
	}
	if err := checkTargets(opts.Members); err != nil {
		return nil, err
	}
	// A wrong or missing identity is known now, before a directory is created.
	if err := snapshot.CanRead(st, m); err != nil {
		return nil, err
	}
	if err := delta.CanRead(ctx, st, opts.Deltas); err != nil {
		return nil, err
	}
	for _, mem := range opts.Members {
		for _, dir := range []string{mem.DataDir, mem.WALDir} {
			if dir != "" {
				removeLeftovers(ctx, dir)
			}
		}
	}
	// The parent dirs this restore made go last on a failure, and only if empty: another
	// restore may be writing into them too (its target beside this one's).
	var madeDirs []string
	defer func() {
		if err == nil {
			return
		}
		for i := len(madeDirs) - 1; i >= 0; i-- {
			if rerr := os.Remove(madeDirs[i]); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && !errors.Is(rerr, syscall.ENOTEMPTY) && !errors.Is(rerr, syscall.EEXIST) {
				slog.Warn("could not remove a dir a failed restore made", "path", madeDirs[i], "err", rerr)
			}
		}
	}()
	own := newOwner()
	defer own.release() // after the clean-up below: the lock outlives what it guards

	// Everything else this restore creates is recorded, and removed again on any failure.
	var created []string
	defer func() {
		if err == nil {
			return
		}
		for i := len(created) - 1; i >= 0; i-- {
			if rerr := os.RemoveAll(created[i]); rerr != nil {
				slog.Warn("could not remove what a failed restore wrote", "path", created[i], "err", rerr)
			}
		}
	}()
	for _, mem := range opts.Members {
		for _, dir := range []string{mem.DataDir, mem.WALDir} {
			if dir == "" {
				continue
			}
			made, err := mkdirParents(dir)
			if err != nil {
				return nil, err
			}
			madeDirs = append(madeDirs, made...)
			if err := own.claim(dir); err != nil {
				return nil, err
			}
		}
	}
	if err := checkSpace(opts.Members, m.DBSize+replayGrowth(opts.Deltas)); err != nil {
		return nil, err
	}

	// The raw snapshot goes next to the first member, on the disk that must hold it anyway.
	dbPath := own.tempName(opts.Members[0].DataDir) + ".db"
	created = append(created, dbPath)
	start := time.Now()
	if err := download(ctx, st, m, dbPath); err != nil {
		var corrupt *snapshot.CorruptError
		if errors.As(err, &corrupt) {
			return nil, corruptBase(ctx, st, m, corrupt, opts.Chosen)
		}
		return nil, err
	}
	slog.InfoContext(ctx, "snapshot downloaded and verified", "snapshot", m.ID, "db_size", m.DBSize, "took", since(start))
	var replayed *Replayed
	if len(opts.Deltas) > 0 {
		start := time.Now()
		rp, err := Replay(ctx, st, m, opts.Deltas, opts.TargetRev, opts.TargetTime, dbPath)
		if err != nil {
			return nil, err
		}
		if opts.TargetRev > 0 && rp.Revision != opts.TargetRev {
			return nil, fmt.Errorf("revision %d is beyond the captured deltas: the latest reachable point is revision %d (%s)",
				opts.TargetRev, rp.Revision, rp.Time.UTC().Format(time.RFC3339))
		}
		replayed = rp
		slog.InfoContext(ctx, "deltas replayed", "snapshot", m.ID, "revision", rp.Revision, "revisions", rp.Revisions, "events", rp.Events, "took", since(start))
	}
	// The members are restored in parallel (each only reads the downloaded file) into
	// hidden temp dirs, and nothing is renamed into place until every one succeeded.
	tmps := make([]Member, len(opts.Members))
	for i, mem := range opts.Members {
		tmps[i] = Member{Name: mem.Name, PeerURLs: mem.PeerURLs, DataDir: own.tempName(mem.DataDir)}
		created = append(created, tmps[i].DataDir)
		if mem.WALDir != "" {
			tmps[i].WALDir = own.tempName(mem.WALDir)
			created = append(created, tmps[i].WALDir)
		}
	}
	var (
		wg   sync.WaitGroup
		errs = make([]error, len(tmps))
		sem  = make(chan struct{}, runtime.GOMAXPROCS(0))
	)
	for i, tmp := range tmps {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				return
			}
			start := time.Now()
			err := etcdutl.NewV3(zap.NewNop()).Restore(etcdutl.RestoreConfig{
				SnapshotPath:        dbPath,
				Name:                tmp.Name,
				OutputDataDir:       tmp.DataDir,
				OutputWALDir:        tmp.WALDir,
				PeerURLs:            tmp.PeerURLs,
				InitialCluster:      opts.InitialCluster,
				InitialClusterToken: opts.Token,
				RevisionBump:        opts.BumpRevision,
				MarkCompacted:       opts.MarkCompacted,
				// download checked all of the file (size, sha256, etcd's trailer) as it
				// wrote it, and a replayed db is our own bbolt file without a trailer:
				// etcd's check would read every member's copy once more for nothing.
				SkipHashCheck: true,
			})
			if err != nil {
				errs[i] = fmt.Errorf("restoring member %s: %w", tmp.Name, diskError(err, m.DBSize+walSegment))
				return
			}
			for _, dir := range []string{tmp.DataDir, tmp.WALDir} {
				if err := tightenModes(dir); err != nil {
					errs[i] = fmt.Errorf("restoring member %s: %w", tmp.Name, err)
					return
				}
			}
			slog.InfoContext(ctx, "member restored", "member", tmp.Name, "took", since(start))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	res = &Result{Snapshot: m, Replayed: replayed, Revision: m.Revision, KeyCount: m.KeyCount, InitialCluster: opts.InitialCluster, Token: opts.Token}
	if replayed != nil {
		res.Revision, res.KeyCount = replayed.Revision, &replayed.Keys
	}
	if opts.BumpRevision > 0 {
		// etcd's restore bumps the key bucket's newest revision, which etcdutl reports as
		// the revision and which is the snapshot's revision unless compaction removed it.
		res.Revision += int64(opts.BumpRevision)
	}
	for i, mem := range opts.Members {
		if err := moveIntoPlace(tmps[i].DataDir, mem.DataDir); err != nil {
			return nil, err
		}
		created = append(created, mem.DataDir)
		if mem.WALDir != "" {
			if err := moveIntoPlace(tmps[i].WALDir, mem.WALDir); err != nil {
				return nil, err
			}
			created = append(created, mem.WALDir)
		}
		res.Members = append(res.Members, MemberResult{Member: mem, Command: startCommand(mem, opts)})
	}
	if err := os.Remove(dbPath); err != nil {
		slog.Warn("could not remove the restore's temporary snapshot file", "path", dbPath, "err", err)
	}
	return res, nil
}

// download writes the raw snapshot to path and checks all of it (size, sha256, etcd's
// trailer, revision) before anything else happens.
func download(ctx context.Context, st store.Store, m *snapshot.Manifest, path string) error {
	rc, err := st.Get(ctx, m.Object)
	if errors.Is(err, store.ErrNotExist) {
		return fmt.Errorf("snapshot %s: its object %s does not exist although its manifest does; restore another snapshot (`etcdguard snapshot list`)", m.ID, m.Object)
	}
	if err != nil {
		return fmt.Errorf("downloading snapshot %s: %w", m.Object, err)
	}
	defer rc.Close()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer f.Close()
	if _, err := snapshot.ReadVerified(ctx, rc, m, f); err != nil {
		var corrupt *snapshot.CorruptError
		if errors.As(err, &corrupt) {
			return err
		}
		return fmt.Errorf("downloading snapshot %s to %s: %w", m.ID, path, diskError(err, m.DBSize))
	}
	// No fsync: this file only feeds etcd's restore, which copies and syncs it, and a
	// crash leaves nothing but this temp file behind.
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, diskError(err, m.DBSize))
	}
	return nil
}

// CorruptBaseError is a snapshot that download found corrupt; Err says how.
type CorruptBaseError struct {
	msg string
	Err *snapshot.CorruptError
}

func (e *CorruptBaseError) Error() string { return e.msg }
func (e *CorruptBaseError) Unwrap() error { return e.Err }

// corruptBase records, as `snapshot verify` does, that m failed verification, so no
// restore, retention or freshness check counts it again, and says what to do next: a
// base chosen for a point is replaced by the next older one when the restore runs again.
func corruptBase(ctx context.Context, st store.Store, m *snapshot.Manifest, c *snapshot.CorruptError, chosen bool) error {
	problems := strings.Join(c.Problems, "; ")
	rep := &snapshot.VerifyReport{ID: m.ID, Cluster: m.Cluster, Object: m.Object, Problems: c.Problems}
	if err := snapshot.RecordVerification(context.WithoutCancel(ctx), st, rep); err != nil {
		return &CorruptBaseError{Err: c, msg: fmt.Sprintf("snapshot %s is corrupt (%s) and recording its failed verification failed too (%v); nothing was written: "+
			"run `etcdguard snapshot verify %s` with write access to the store, then the restore again (it then uses an older snapshot)", m.ID, problems, err, m.ID)}
	}
	if chosen {
		return &CorruptBaseError{Err: c, msg: fmt.Sprintf("snapshot %s, chosen as the base, is corrupt (%s); its failed verification is recorded and nothing was written: "+
			"run the same restore again, it will use the next older snapshot", m.ID, problems)}
	}
	return &CorruptBaseError{Err: c, msg: fmt.Sprintf("snapshot %s is corrupt (%s); its failed verification is recorded and nothing was written: "+
		"restore another snapshot (`etcdguard snapshot list`)", m.ID, problems)}
}

// checkTargets refuses data and WAL dirs that exist and are not empty: a restore never
// overwrites a member's data.
func checkTargets(members []Member) error {
	seen := map[string]string{}
	for _, mem := range members {
		for _, dir := range []string{mem.DataDir, mem.WALDir} {
			if dir == "" {
				continue
			}
			abs, _ := filepath.Abs(dir)
			if other, dup := seen[abs]; dup {
				return fmt.Errorf("members %s and %s would both be written to %s", other, mem.Name, dir)
			}
			seen[abs] = mem.Name
			entries, err := os.ReadDir(dir)
			switch {
			case errors.Is(err, os.ErrNotExist):
			case err != nil:
				return fmt.Errorf("checking target %s: %w", dir, err)
			case len(entries) > 0:
				return fmt.Errorf("%s exists and is not empty: a restore never overwrites data; move it aside (mv %s %s.old) or choose another --data-dir", dir, dir, dir)
			}
		}
	}
	return nil
}

// checkSpace fails early, saying how much is needed, if a filesystem cannot hold what the
// restore writes to it: the raw snapshot once, and per member its db plus a WAL segment.
func checkSpace(members []Member, dbSize int64) error {
	type fs struct {
		dir        string
		free, need int64
	}
	byDev := map[[2]int32]*fs{}
	for i, mem := range members {
		need := dbSize + walSegment
		if i == 0 {
			need += dbSize // the downloaded snapshot
		}
		parent := filepath.Dir(filepath.Clean(mem.DataDir))
		var sfs syscall.Statfs_t
		if err := syscall.Statfs(parent, &sfs); err != nil {
			return fmt.Errorf("checking free space in %s: %w", parent, err)
		}
		key := sfs.Fsid.X__val
		f, ok := byDev[key]
		if !ok {
			f = &fs{dir: parent, free: int64(sfs.Bavail) * sfs.Bsize}
			byDev[key] = f
		}
		f.need += need
	}
	for _, f := range byDev {
		if f.free < f.need {
			return fmt.Errorf("not enough disk space in %s: %s free, the restore needs about %s; free some space or restore elsewhere",
				f.dir, mib(f.free), mib(f.need))
		}
	}
	return nil
}

// replayGrowth estimates how much replaying deltas grows the db: segments are compressed
// 2–3:1, every revision stays in the db as history, and bbolt adds its page overhead.
func replayGrowth(segs []*delta.Manifest) int64 {
	var n int64
	for _, s := range segs {
		n += 4 * s.Size
	}
	return n
}

// diskError turns ENOSPC into advice.
func diskError(err error, need int64) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("disk full (%w): the restore needs about %s per member; free space or restore elsewhere", err, mib(need))
	}
	return err
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

func mib(n int64) string { return fmt.Sprintf("%d MiB", (n+1<<20-1)>>20) }

// mkdirParents creates dir's missing parents and returns those it created, outermost
// first, so a failed restore can remove exactly what it made.
func mkdirParents(dir string) ([]string, error) {
	parent := filepath.Dir(filepath.Clean(dir))
	var made []string // outermost first
	for p := parent; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		made = append([]string{p}, made...)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", parent, err)
	}
	return made, nil
}

// tightenModes takes group and other bits off every file and dir under dir. etcd's
// restore writes the raft .snap file 0666 less the umask (0644 usually); it holds the
// cluster's membership and the member's data dir is 0700 anyway, but what etcdguard
// leaves on disk should not rely on a parent's mode nor on the operator's umask. etcd
// requires nothing wider.
func tightenModes(dir string) error {
	if dir == "" {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 && info.Mode().Type()&fs.ModeSymlink == 0 {
			if err := os.Chmod(p, perm&^0o077); err != nil {
				return fmt.Errorf("restricting %s to its owner: %w", p, err)
			}
		}
		return nil
	})
}

// moveIntoPlace renames a finished dir to its target; an empty target dir is replaced.
func moveIntoPlace(tmp, target string) error {
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replacing empty %s: %w", target, err)
	}
	if err := os.Rename(tmp, target); err != nil {
		return fmt.Errorf("moving the restored member into %s: %w", target, err)
	}
	return syncDir(filepath.Dir(target))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// startCommand is the etcd command line for a restored member's first start. The data
// dir already holds the membership, so these flags must match it; client URLs and TLS
// flags stay as the member had them.
func startCommand(mem Member, opts Options) []string {
	cmd := []string{"etcd", "--name", mem.Name, "--data-dir", mem.DataDir}
	if mem.WALDir != "" {
		cmd = append(cmd, "--wal-dir", mem.WALDir)
	}
	listen := make([]string, len(mem.PeerURLs))
	for i, u := range mem.PeerURLs {
		listen[i] = bindURL(u)
	}
	return append(cmd,
		"--initial-cluster", opts.InitialCluster,
		"--initial-cluster-token", opts.Token,
		"--initial-cluster-state", "new",
		"--initial-advertise-peer-urls", strings.Join(mem.PeerURLs, ","),
		"--listen-peer-urls", strings.Join(listen, ","))
}
