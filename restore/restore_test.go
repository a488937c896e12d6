package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

// fixture is an etcd with three snapshots of it in a file store, at different revisions.
type fixture struct {
	st    store.Store
	snaps []*snapshot.Manifest // oldest first
	cli   *clientv3.Client
}

func newFixture(t *testing.T, n int) *fixture {
	t.Helper()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st, cli: cli}
	for i := range n {
		for j := range 50 {
			if _, err := cli.Put(context.Background(), fmt.Sprintf("/registry/pods/ns%d/p%d", i, j), strings.Repeat("x", 100*j)); err != nil {
				t.Fatal(err)
			}
		}
		m, err := snapshot.Save(context.Background(), cli, st, snapshot.SaveOptions{
			Cluster: "c1", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "fastest",
			History: delta.Identify(cli, st, "c1"),
		})
		if err != nil {
			t.Fatal(err)
		}
		f.snaps = append(f.snaps, m)
		time.Sleep(20 * time.Millisecond) // distinct created_at
	}
	return f
}

func TestSelect(t *testing.T) {
	f := newFixture(t, 3)
	s0, s1, s2 := f.snaps[0], f.snaps[1], f.snaps[2]
	tests := []struct {
		name    string
		sel     Selector
		want    *snapshot.Manifest
		wantErr string
	}{
		{name: "id", sel: Selector{ID: s1.ID}, want: s1},
		{name: "latest", sel: Selector{ID: "latest"}, want: s2},
		{name: "at the exact start of one", sel: Selector{At: s1.CreatedAt}, want: s1},
		{name: "between two without deltas", sel: Selector{At: s1.CreatedAt.Add(5 * time.Millisecond)}, wantErr: "restore it with --revision " + fmt.Sprint(s1.Revision)},
		// Exact or refused: with no deltas after a snapshot, a later point is not reachable.
		{name: "after the last", sel: Selector{At: time.Now().Add(time.Hour)}, wantErr: fmt.Sprintf("the latest reachable point from snapshot %s is revision %d", s2.ID, s2.Revision)},
		{name: "revision exactly", sel: Selector{Revision: s1.Revision}, want: s1},
		{name: "revision between", sel: Selector{Revision: s1.Revision + 1}, wantErr: fmt.Sprintf("revision %d is past what was captured", s1.Revision+1)},
		{name: "revision beyond", sel: Selector{Revision: s2.Revision + 1000}, wantErr: "--revision " + fmt.Sprint(s2.Revision)},
		{name: "at before the first", sel: Selector{At: s0.CreatedAt.Add(-time.Second)}, wantErr: "the first is " + s0.ID},
		{name: "revision below the oldest", sel: Selector{Revision: s0.Revision - 1}, wantErr: "the oldest, " + s0.ID},
		// ids sort by their start second, so the nearest to an old id starts with the oldest second.
		{name: "unknown id", sel: Selector{ID: "20200101T000000Z-aaaaaa"}, wantErr: "nearest: " + s0.ID[:len("20060102T150405Z")]},
		{name: "two selectors", sel: Selector{ID: "latest", Revision: 3}, wantErr: "exactly one of"},
		{name: "none", sel: Selector{}, wantErr: "exactly one of"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Select(context.Background(), f.st, "c1", tc.sel)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Base.ID != tc.want.ID || len(got.Deltas) != 0 {
				t.Fatalf("Select = %+v, %v; want %s", got, err, tc.want.ID)
			}
		})
	}
}

func TestMemberPlan(t *testing.T) {
	const ic = "m1=http://127.0.0.1:2380,m2=http://127.0.0.2:2380,m3=http://127.0.0.3:2380"
	tests := []struct {
		name    string
		plan    MemberPlan
		want    []Member
		wantErr string
	}{
		{name: "all members under a parent", plan: MemberPlan{InitialCluster: ic, AllMembers: true, DataDir: "/r"}, want: []Member{
			{Name: "m1", PeerURLs: []string{"http://127.0.0.1:2380"}, DataDir: "/r/m1.etcd"},
			{Name: "m2", PeerURLs: []string{"http://127.0.0.2:2380"}, DataDir: "/r/m2.etcd"},
			{Name: "m3", PeerURLs: []string{"http://127.0.0.3:2380"}, DataDir: "/r/m3.etcd"}}},
		{name: "all members by template", plan: MemberPlan{InitialCluster: ic, AllMembers: true, DataDirTemplate: "/var/lib/{name}/etcd"}, want: []Member{
			{Name: "m1", PeerURLs: []string{"http://127.0.0.1:2380"}, DataDir: "/var/lib/m1/etcd"},
			{Name: "m2", PeerURLs: []string{"http://127.0.0.2:2380"}, DataDir: "/var/lib/m2/etcd"},
			{Name: "m3", PeerURLs: []string{"http://127.0.0.3:2380"}, DataDir: "/var/lib/m3/etcd"}}},
		{name: "one member", plan: MemberPlan{InitialCluster: ic, Name: "m2", DataDir: "/d", WALDir: "/w"}, want: []Member{
			{Name: "m2", PeerURLs: []string{"http://127.0.0.2:2380"}, DataDir: "/d", WALDir: "/w"}}},
		{name: "one member, default dir, matching advertise URLs", plan: MemberPlan{InitialCluster: ic, Name: "m1", AdvertiseTo: []string{"http://127.0.0.1:2380"}},
			want: []Member{{Name: "m1", PeerURLs: []string{"http://127.0.0.1:2380"}, DataDir: "m1.etcd"}}},
		{name: "name not in the cluster", plan: MemberPlan{InitialCluster: ic, Name: "m4"}, wantErr: `--name "m4" is not in --initial-cluster (members: m1, m2, m3)`},
		{name: "no name", plan: MemberPlan{InitialCluster: ic}, wantErr: "--name is required (one of m1, m2, m3)"},
		{name: "no initial cluster", plan: MemberPlan{Name: "m1"}, wantErr: "--initial-cluster is required"},
		{name: "malformed URL", plan: MemberPlan{InitialCluster: "m1=127.0.0.1:2380", Name: "m1"}, wantErr: "malformed --initial-cluster"},
		{name: "not name=url", plan: MemberPlan{InitialCluster: "http://127.0.0.1:2380", Name: "m1"}, wantErr: "malformed --initial-cluster"},
		{name: "advertise mismatch", plan: MemberPlan{InitialCluster: ic, Name: "m1", AdvertiseTo: []string{"http://10.0.0.9:2380"}}, wantErr: "does not match m1's URLs"},
		{name: "malformed advertise URL", plan: MemberPlan{InitialCluster: ic, Name: "m1", AdvertiseTo: []string{"::bad"}}, wantErr: "malformed --initial-advertise-peer-urls"},
		{name: "all members with --name", plan: MemberPlan{InitialCluster: ic, AllMembers: true, DataDir: "/r", Name: "m1"}, wantErr: "--name cannot be used with --all-members"},
		{name: "all members with --wal-dir", plan: MemberPlan{InitialCluster: ic, AllMembers: true, DataDir: "/r", WALDir: "/w"}, wantErr: "--wal-dir cannot be used"},
		{name: "all members without a dir", plan: MemberPlan{InitialCluster: ic, AllMembers: true}, wantErr: "needs --data-dir"},
		{name: "template without name", plan: MemberPlan{InitialCluster: ic, AllMembers: true, DataDirTemplate: "/r/etcd"}, wantErr: "has no {name}"},
		{name: "template without all members", plan: MemberPlan{InitialCluster: ic, Name: "m1", DataDirTemplate: "/r/{name}"}, wantErr: "needs --all-members"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.plan.Members()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("members = %+v\nwant      %+v", got, tc.want)
			}
		})
	}
}

// oneMember is a single-member plan writing into parent.
func oneMember(t *testing.T, parent string) Options {
	t.Helper()
	ic := "r1=http://127.0.0.1:2380"
	members, err := MemberPlan{InitialCluster: ic, Name: "r1", DataDir: filepath.Join(parent, "r1.etcd")}.Members()
	if err != nil {
		t.Fatal(err)
	}
	return Options{Members: members, InitialCluster: ic}
}

// entries lists what is in dir, hidden files included.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return out
}

func TestRestoreRefusesCorruptSnapshots(t *testing.T) {
	f := newFixture(t, 1)
	good := f.snaps[0]
	rewrite := func(mangle func([]byte) []byte) func(t *testing.T) *snapshot.Manifest {
		return func(t *testing.T) *snapshot.Manifest {
			b, err := store.ReadAll(context.Background(), f.st, good.Object, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			m := *good
			m.Object = good.Object + ".mangled"
			if err := store.PutBytes(context.Background(), f.st, m.Object, mangle(b)); err != nil {
				t.Fatal(err)
			}
			return &m
		}
	}
	tests := []struct {
		name     string
		manifest func(t *testing.T) *snapshot.Manifest
		want     string
	}{
		// 16 bytes, not one bit: a single bit can land in a zstd bitstream's padding and
		// decode to the same bytes, which is harmless but not what this case is about.
		{"flipped bytes", rewrite(func(b []byte) []byte { flip(b[len(b)/2:][:16]); return b }), "is corrupt"},
		{"truncated", rewrite(func(b []byte) []byte { return b[:len(b)/2] }), "is corrupt"},
		{"wrong manifest sha256", func(*testing.T) *snapshot.Manifest {
			m := *good
			m.SHA256 = strings.Repeat("ab", 32)
			return &m
		}, "sha256"},
		{"missing object", func(*testing.T) *snapshot.Manifest {
			m := *good
			m.Object += ".gone"
			return &m
		}, "does not exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "restore")
			_, err := Restore(context.Background(), f.st, tc.manifest(t), oneMember(t, parent))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if left := entries(t, parent); len(left) > 0 {
				t.Fatalf("a refused restore left %v", left)
			}
			if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the parent dir the restore created is still there: %v", err)
			}
		})
	}
}

func TestRestoreTargets(t *testing.T) {
	f := newFixture(t, 1)
	m := f.snaps[0]

	t.Run("existing data dir is refused and untouched", func(t *testing.T) {
		parent := t.TempDir()
		opts := oneMember(t, parent)
		precious := filepath.Join(opts.Members[0].DataDir, "member", "snap", "db")
		os.MkdirAll(filepath.Dir(precious), 0o700)
		os.WriteFile(precious, []byte("the old member's data"), 0o600)
		_, err := Restore(context.Background(), f.st, m, opts)
		if err == nil || !strings.Contains(err.Error(), "exists and is not empty") {
			t.Fatalf("err = %v", err)
		}
		if b, _ := os.ReadFile(precious); string(b) != "the old member's data" {
			t.Fatalf("existing data changed: %q", b)
		}
		if got := entries(t, parent); len(got) != 1 {
			t.Fatalf("parent holds %v", got)
		}
	})
	t.Run("empty data dir is used", func(t *testing.T) {
		parent := t.TempDir()
		opts := oneMember(t, parent)
		os.Mkdir(opts.Members[0].DataDir, 0o700)
		res, err := Restore(context.Background(), f.st, m, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(res.Members[0].DataDir, "member", "snap", "db")); err != nil {
			t.Fatal(err)
		}
		if got := entries(t, parent); len(got) != 1 || got[0] != "r1.etcd" {
			t.Fatalf("parent holds %v, want only r1.etcd (no temp files)", got)
		}
	})
	t.Run("separate WAL dir", func(t *testing.T) {
		parent := t.TempDir()
		opts := oneMember(t, parent)
		opts.Members[0].WALDir = filepath.Join(parent, "wal", "r1")
		res, err := Restore(context.Background(), f.st, m, opts)
		if err != nil {
			t.Fatal(err)
		}
		wal := entries(t, res.Members[0].WALDir)
		if len(wal) == 0 || !strings.HasSuffix(wal[0], ".wal") {
			t.Fatalf("wal dir holds %v", wal)
		}
		if got := entries(t, filepath.Join(res.Members[0].DataDir, "member")); strings.Contains(strings.Join(got, " "), "wal") {
			t.Fatalf("data dir also has a wal: %v", got)
		}
		if cmd := strings.Join(res.Members[0].Command, " "); !strings.Contains(cmd, "--wal-dir "+opts.Members[0].WALDir) {
			t.Fatalf("start command lacks --wal-dir: %s", cmd)
		}
	})
	t.Run("bump needs mark-compacted", func(t *testing.T) {
		opts := oneMember(t, t.TempDir())
		opts.BumpRevision = 10
		if _, err := Restore(context.Background(), f.st, m, opts); err == nil || !strings.Contains(err.Error(), "go together") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("what killed restores left is removed", func(t *testing.T) {
		parent := t.TempDir()
		opts := oneMember(t, parent)
		gone := exec.Command("true")
		if err := gone.Run(); err != nil {
			t.Fatal(err)
		}
		dead, live := gone.Process.Pid, os.Getppid()
		killed := fmt.Sprintf(".r1.etcd.etcdguard-%d-0badc0de", dead)
		running := fmt.Sprintf(".r1.etcd.etcdguard-%d-00c0ffee", live)
		unknown := ".r1.etcd.etcdguard-deadbeef"   // no pid in it: cannot tell, kept
		rescue := ".r1.etcd.etcdguard-rescue-copy" // an operator's, say: no restore names so
		// Named under a lock: kept while a process holds it, whatever its PID namespace.
		killedLocked, runningLocked, unlocked := ".r1.etcd.etcdguard-r0000000000a1-0badc0de", ".r1.etcd.etcdguard-r0000000000b2-00c0ffee", ".r1.etcd.etcdguard-r0000000000c3-feedf00d"
		os.WriteFile(filepath.Join(parent, ".r1.etcd.etcdguard-r0000000000a1.lock"), nil, 0o600)
		held := filepath.Join(parent, ".r1.etcd.etcdguard-r0000000000b2.lock")
		hf := must(os.Create(held))
		defer hf.Close()
		if err := syscall.Flock(int(hf.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{killed, running, unknown, rescue, killedLocked, runningLocked, unlocked} {
			os.MkdirAll(filepath.Join(parent, d, "member", "snap"), 0o700)
			os.WriteFile(filepath.Join(parent, d, "member", "snap", "db"), []byte("half"), 0o600)
		}
		os.WriteFile(filepath.Join(parent, killed+".db"), []byte("half a download"), 0o600)
		if _, err := Restore(context.Background(), f.st, m, opts); err != nil {
			t.Fatal(err)
		}
		got := entries(t, parent)
		want := []string{running, unknown, rescue, runningLocked, filepath.Base(held), "r1.etcd"}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("parent holds %v, want %v", got, want)
		}
	})
	t.Run("a failed restore keeps what another writes beside it", func(t *testing.T) {
		parent := filepath.Join(t.TempDir(), "new") // made by this restore
		other := filepath.Join(parent, "r2.etcd")   // another restore's, finished meanwhile
		st := &getHook{Store: f.st, before: func() {
			if err := os.MkdirAll(filepath.Join(other, "member"), 0o700); err != nil {
				t.Error(err)
			}
		}}
		if _, err := Restore(context.Background(), st, m, oneMember(t, parent)); err == nil {
			t.Fatal("a restore whose download fails succeeded")
		}
		if got := entries(t, parent); !slices.Equal(got, []string{"r2.etcd"}) {
			t.Fatalf("after the failed restore %s holds %v, want only the other restore's r2.etcd", parent, got)
		}
	})
	t.Run("cancelled restore leaves nothing", func(t *testing.T) {
		parent := filepath.Join(t.TempDir(), "r")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Restore(ctx, f.st, m, oneMember(t, parent)); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("cancelled restore left %s", parent)
		}
	})
}

// A restore into a filesystem that is too small fails before writing, and says how much
// it needs. It needs a tmpfs mount, so it runs only where the test may mount (root).
func TestRestoreDiskFull(t *testing.T) {
	f := newFixture(t, 1)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (%v); the disk-full path is covered by checkSpace only", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	_, err := Restore(context.Background(), f.st, f.snaps[0], oneMember(t, filepath.Join(dir, "restore")))
	if err == nil || !strings.Contains(err.Error(), "not enough disk space") || !strings.Contains(err.Error(), "needs about") {
		t.Fatalf("err = %v", err)
	}
	if left := entries(t, dir); len(left) > 0 {
		t.Fatalf("left %v", left)
	}
}

// Deltas that cannot be trusted stop a point-in-time restore before any member is written:
// the error names the latest point that is reachable, and nothing is left behind.
func TestRestoreRefusesBadDeltas(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	base := f.snaps[0]
	var revs []delta.Revision
	for i := range 50 { // five segments; the target is in the third
		r := must(f.cli.Put(ctx, fmt.Sprintf("/registry/pods/ns0/p%d", i), "changed")).Header.Revision
		revs = append(revs, delta.Revision{Rev: r, Time: time.Now(), Events: []delta.Event{{Key: fmt.Appendf(nil, "/registry/pods/ns0/p%d", i), Value: []byte("changed")}}})
	}
	var segs []*delta.Manifest
	for i := 0; i < len(revs); i += 10 {
		m, err := delta.WriteSegment(ctx, f.st, "c1", delta.Identity{History: base.History}, revs[i:i+10])
		if err != nil {
			t.Fatal(err)
		}
		segs = append(segs, m)
	}
	target := revs[25].Rev
	reachable := fmt.Sprintf("latest reachable point is revision %d", segs[0].ToRev)
	tests := []struct {
		name string
		segs func(t *testing.T) []*delta.Manifest
		want string
	}{
		{"corrupt segment", func(t *testing.T) []*delta.Manifest {
			m := *segs[1]
			m.Object += ".flipped"
			b, err := store.ReadAll(ctx, f.st, segs[1].Object, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x40
			if err := store.PutBytes(ctx, f.st, m.Object, b); err != nil {
				t.Fatal(err)
			}
			return []*delta.Manifest{segs[0], &m, segs[2]}
		}, reachable},
		{"segment object missing", func(*testing.T) []*delta.Manifest {
			m := *segs[1]
			m.Object += ".gone"
			return []*delta.Manifest{segs[0], &m, segs[2]}
		}, reachable},
		{"gap between segments", func(*testing.T) []*delta.Manifest {
			return []*delta.Manifest{segs[0], segs[2]}
		}, reachable},
		{"target beyond the deltas", func(*testing.T) []*delta.Manifest {
			return segs[:2]
		}, fmt.Sprintf("latest reachable point is revision %d", segs[1].ToRev)},
		// The same revisions in another history (etcd restored onto the same revision
		// numbers) line up, but must never be replayed onto this base.
		{"segment of another history", func(t *testing.T) []*delta.Manifest {
			other, err := delta.WriteSegment(ctx, f.st, "c1", delta.Identity{History: "20260101T000000Z-0ther0"}, revs[10:20])
			if err != nil {
				t.Fatal(err)
			}
			return []*delta.Manifest{segs[0], other, segs[2]}
		}, fmt.Sprintf(`belongs to history "20260101T000000Z-0ther0", the base snapshot to history %q`, base.History)},
		// Encrypted segments this restore has no identity for: known before anything is
		// downloaded or written (under another cluster name, so the plain ones stay).
		{"encrypted segments without the identity", func(t *testing.T) []*delta.Manifest {
			id, err := age.GenerateX25519Identity()
			if err != nil {
				t.Fatal(err)
			}
			to, err := crypt.ParseRecipients([]string{id.Recipient().String()}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var out []*delta.Manifest
			for i := 0; i < 30; i += 10 {
				m, err := delta.WriteSegment(ctx, crypt.Wrap(f.st, to, nil), "enc", delta.Identity{History: base.History}, revs[i:i+10])
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, m)
			}
			return out
		}, "encrypted with age to "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "restore")
			opts := oneMember(t, parent)
			opts.Deltas, opts.TargetRev = tc.segs(t), target
			_, err := Restore(ctx, f.st, base, opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the refused restore left %v", entries(t, parent))
			}
		})
	}
	// Planning lists and keeps only the segments from the base to the target: the replay,
	// and the free-space check that counts them, never see the later ones.
	plan, err := Select(ctx, f.st, "c1", Selector{Revision: target})
	if err != nil || plan.Base.ID != base.ID || len(plan.Deltas) != 3 || plan.Deltas[2].ToRev != segs[2].ToRev || plan.TargetRev != target {
		t.Fatalf("plan for revision %d: %+v, %v; want the 3 segments up to it", target, plan, err)
	}
	// The plan's segments come from a listing: each carries its stored size, so the check
	// counts exactly the 3 planned ones (a size of 0 would let any disk pass).
	if got, want, all := replayGrowth(plan.Deltas), replayGrowth(segs[:3]), replayGrowth(segs); got == 0 || got != want || got >= all {
		t.Fatalf("free space counted for %d segments' growth: %d, want %d (of %d for all %d)", len(plan.Deltas), got, want, all, len(segs))
	}
	// The same deltas, intact, reach the target.
	parent := filepath.Join(t.TempDir(), "restore")
	opts := oneMember(t, parent)
	opts.Deltas, opts.TargetRev = segs, target
	res, err := Restore(ctx, f.st, base, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Revision != target || res.Replayed.Revisions != int(target-base.Revision) {
		t.Fatalf("reached revision %d after %d revisions, want %d", res.Revision, res.Replayed.Revisions, target)
	}
	if left := entries(t, parent); len(left) != 1 {
		t.Fatalf("after the restore %v is in %s, want only the data dir", left, parent)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func flip(b []byte) {
	for i := range b {
		b[i] ^= 0xff
	}
}

// A corrupt newest base that nobody verified fails the restore, writing nothing; the
// restore records the failed verification as `snapshot verify` does, so the next run (of
// --at, --revision or latest, where no flag names the base) plans from the next older one.
func TestRestoreRecordsCorruptBase(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 3)
	older, newest := f.snaps[1], f.snaps[2]
	b := must(store.ReadAll(ctx, f.st, newest.Object, 64<<20))
	flip(b[len(b)/2:][:16])
	must(0, store.PutBytes(ctx, f.st, newest.Object, b))

	tests := []struct {
		name   string
		chosen bool
		want   string
	}{
		{"chosen for a point", true, "run the same restore again, it will use the next older snapshot"},
		{"named by id", false, "restore another snapshot"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := must(Select(ctx, f.st, "c1", Selector{ID: "latest"}))
			if plan.Base.ID != newest.ID {
				t.Fatalf("latest is %s before any restore found it corrupt, want %s", plan.Base.ID, newest.ID)
			}
			parent := filepath.Join(t.TempDir(), "restore")
			opts := oneMember(t, parent)
			opts.Chosen = tc.chosen
			_, err := Restore(ctx, f.st, plan.Base, opts)
			var corrupt *snapshot.CorruptError
			if !errors.As(err, &corrupt) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "is recorded and nothing was written") {
				t.Fatalf("err = %v, want a corrupt snapshot saying %q", err, tc.want)
			}
			if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the failed restore left %v", entries(t, parent))
			}
			if m := must(snapshot.Find(ctx, f.st, "c1", newest.ID)); m.Verification != snapshot.Failed || len(m.Problems) == 0 {
				t.Fatalf("snapshot %s is %q %v after the restore found it corrupt, want failed", m.ID, m.Verification, m.Problems)
			}
			// The second run: the next older base, and a restore that works.
			plan = must(Select(ctx, f.st, "c1", Selector{ID: "latest"}))
			if plan.Base.ID != older.ID {
				t.Fatalf("the second run chose %s, want the next older %s", plan.Base.ID, older.ID)
			}
			opts = oneMember(t, parent)
			opts.Chosen = tc.chosen
			if _, err := Restore(ctx, f.st, plan.Base, opts); err != nil {
				t.Fatal(err)
			}
			// For the next case: the newest is unverified again (its record removed).
			must(0, f.st.Delete(ctx, "c1/snapshots/"+newest.ID+".failed.json"))
		})
	}
}

// Members of one cluster restored on their own hosts (--name) need one token: a token each
// run picks for itself would make members that never form a cluster. Refused, writing
// nothing, unless the token is given or every member is restored in one run.
func TestRestoreTokenForSomeMembers(t *testing.T) {
	f := newFixture(t, 1)
	const three = "m1=http://127.0.0.1:2380,m2=http://127.0.0.2:2380,m3=http://127.0.0.3:2380"
	tests := []struct {
		name    string
		plan    MemberPlan
		token   string
		wantErr string
	}{
		{name: "one of three without a token", plan: MemberPlan{InitialCluster: three, Name: "m2"},
			wantErr: "this run restores only m2: give --initial-cluster-token, the same on every member's run"},
		{name: "one of three with a token", plan: MemberPlan{InitialCluster: three, Name: "m2"}, token: "etcd-restore-dr1"},
		{name: "all three in one run", plan: MemberPlan{InitialCluster: three, AllMembers: true}},
		{name: "a one-member cluster", plan: MemberPlan{InitialCluster: "m1=http://127.0.0.1:2380", Name: "m1"}},
		{name: "one member with two peer URLs", plan: MemberPlan{InitialCluster: "m1=http://127.0.0.1:2380,m1=http://127.0.0.1:2381", Name: "m1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "restore")
			tc.plan.DataDir = filepath.Join(parent, "m.etcd")
			if tc.plan.AllMembers {
				tc.plan.DataDir = parent
			}
			members := must(tc.plan.Members())
			res, err := Restore(context.Background(), f.st, f.snaps[0], Options{Members: members, InitialCluster: tc.plan.InitialCluster, Token: tc.token})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("the refused restore left %v", entries(t, parent))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.token != "" && res.Token != tc.token || len(res.Members) != len(members) {
				t.Fatalf("restored %d members with token %q", len(res.Members), res.Token)
			}
		})
	}
}

// getHook runs before on each Get, then fails it.
type getHook struct {
	store.Store
	before func()
}

func (g *getHook) Get(context.Context, string) (io.ReadCloser, error) {
	g.before()
	return nil, errors.New("connection reset by peer")
}
