package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
	s3store "github.com/etcdguard/etcdguard/store/s3"
)

// backend is a store under test plus a way to see what interrupted uploads left behind.
type backend struct {
	name     string
	open     func(t *testing.T) (store.Store, func() []string)
	rewriter func(t *testing.T, st store.Store, key string, mangle func([]byte) []byte)
}

func backends() []backend {
	rewrite := func(t *testing.T, st store.Store, key string, mangle func([]byte) []byte) {
		b, err := store.ReadAll(context.Background(), st, key, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.PutBytes(context.Background(), st, key, mangle(b)); err != nil {
			t.Fatal(err)
		}
	}
	return []backend{
		{name: "file", rewriter: rewrite, open: func(t *testing.T) (store.Store, func() []string) {
			dir := t.TempDir()
			st, err := file.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			// Anything in the directory that is not a listed object is a leftover.
			leftovers := func() []string {
				var out []string
				filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
					if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".") {
						out = append(out, p)
					}
					return nil
				})
				return out
			}
			return st, leftovers
		}},
		{name: "s3", rewriter: rewrite, open: func(t *testing.T) (store.Store, func() []string) {
			srv := testharness.StartFakeS3(t)
			cli := srv.Client(t)
			// 5 MiB parts, the S3 minimum, so a test DB spans several parts.
			st := s3store.NewFromClient(cli, srv.Bucket, "backups", store.Options{PartSize: 5 << 20, Concurrency: 2})
			return st, func() []string { return srv.OpenUploads(t) }
		}},
	}
}

// loadValues writes ~n MiB of incompressible-ish values so a snapshot spans several parts.
func loadValues(t *testing.T, cli *clientv3.Client, mib int) {
	t.Helper()
	val := make([]byte, 64<<10)
	for i := range mib * 16 {
		for j := range val {
			val[j] = byte(i*7 + j*j)
		}
		if _, err := cli.Put(context.Background(), "/registry/configmaps/default/cm-"+strings.Repeat("0", 3)+string(rune('a'+i%26))+"-"+time.Now().Format("150405.000000"), string(val)); err != nil {
			t.Fatal(err)
		}
	}
}

func save(t *testing.T, cli *clientv3.Client, e *testharness.Etcd, st store.Store, compression string) *Manifest {
	t.Helper()
	m, err := Save(context.Background(), cli, st, SaveOptions{
		Cluster: "c1", Endpoint: e.Endpoints[0], Compression: compression, Level: "fastest",
	})
	if err != nil {
		t.Fatalf("save: %v", err)
	}
	return m
}

func TestSaveListVerify(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	put(t, cli, 3000, 0, "registry/pods")
	loadValues(t, cli, 12)
	want := fetchSnapshot(t, cli) // no writes follow, so the state is the same
	wantStatus := etcdutlStatus(t, want)

	for _, b := range backends() {
		for _, compression := range Compressions {
			t.Run(b.name+"/"+compression, func(t *testing.T) {
				st, leftovers := b.open(t)
				if ever, err := EverStored(context.Background(), st, "c1"); ever || err != nil {
					t.Fatalf("EverStored before the first snapshot: %v, %v", ever, err)
				}
				m := save(t, cli, e, st, compression)
				if ever, err := EverStored(context.Background(), st, "c1"); !ever || err != nil {
					t.Errorf("EverStored after a snapshot: %v, %v", ever, err)
				}

				if m.KeyCount == nil || *m.KeyCount != int64(wantStatus.TotalKey) {
					t.Errorf("manifest key_count %v, etcdutl counts %d keys", m.KeyCount, wantStatus.TotalKey)
				}
				if m.Revision != wantStatus.Revision || m.DBSize != int64(len(want)) {
					t.Errorf("manifest revision %d size %d; etcdutl says revision %d, etcdctl's file is %d bytes",
						m.Revision, m.DBSize, wantStatus.Revision, len(want))
				}
				if !strings.HasSuffix(m.Object, extension(compression)) || m.Cluster != "c1" || m.EtcdVersion == "" || m.ClusterID == "" {
					t.Errorf("manifest fields: %+v", m)
				}
				info, err := st.Stat(context.Background(), m.Object)
				if err != nil || info.Size != m.StoredSize {
					t.Errorf("stored object %v, %v; manifest stored_size %d", info, err, m.StoredSize)
				}

				// Download and decompress: the raw snapshot has the manifest's sha256 and
				// etcdutl reads the same revision and key count from it.
				rc, err := st.Get(context.Background(), m.Object)
				if err != nil {
					t.Fatal(err)
				}
				var raw bytes.Buffer
				_, err = ReadVerified(context.Background(), rc, m, &raw)
				rc.Close()
				if err != nil {
					t.Fatalf("read back: %v", err)
				}
				sum := sha256.Sum256(raw.Bytes())
				if hex.EncodeToString(sum[:]) != m.SHA256 {
					t.Errorf("downloaded sha256 %x, manifest %s", sum, m.SHA256)
				}
				got := etcdutlStatus(t, raw.Bytes())
				if got.Revision != m.Revision || got.TotalKey != wantStatus.TotalKey {
					t.Errorf("etcdutl on the download: revision %d keys %d; want %d, %d", got.Revision, got.TotalKey, m.Revision, wantStatus.TotalKey)
				}

				list, err := List(context.Background(), st, "c1")
				if err != nil || len(list) != 1 || list[0].ID != m.ID {
					t.Fatalf("list = %v, %v", list, err)
				}
				rep, err := Verify(context.Background(), st, m)
				if err != nil || !rep.OK {
					t.Fatalf("verify = %+v, %v", rep, err)
				}
				if l := leftovers(); len(l) > 0 {
					t.Errorf("leftovers after a good save: %v", l)
				}
			})
		}
	}
}

func TestInterruptedSaveLeavesNothing(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	loadValues(t, cli, 24)

	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			st, leftovers := b.open(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := Save(ctx, cli, st, SaveOptions{
				Cluster: "c1", Endpoint: e.Endpoints[0], Compression: "none", Level: "default",
				// Cancel halfway through, while parts are uploading.
				Progress: func(n int64) {
					if n > 12<<20 {
						cancel()
					}
				},
			})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("save cancelled midway: err = %v, want context.Canceled", err)
			}
			if list, err := List(context.Background(), st, "c1"); err != nil || len(list) != 0 {
				t.Errorf("list after an interrupted save = %v, %v; want nothing", list, err)
			}
			objs, err := st.List(context.Background(), "")
			if err != nil || len(objs) != 0 {
				t.Errorf("objects after an interrupted save: %v, %v", objs, err)
			}
			if l := leftovers(); len(l) > 0 {
				t.Errorf("interrupted save left %v", l)
			}
		})
	}
}

func TestVerifyDetectsCorruption(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	put(t, cli, 2000, 0, "registry/secrets")

	cases := []struct {
		name        string
		compression string
		mangle      func([]byte) []byte
		manifest    func(*Manifest)
		encrypted   bool // with age: the stored bytes are ciphertext
		want        string
	}{
		// 16 bytes: one bit can fall in a zstd bitstream's padding and decode the same
		{name: "flipped bytes, zstd", compression: "zstd", mangle: func(b []byte) []byte {
			for i := range 16 {
				b[len(b)/2+i] ^= 0xff
			}
			return b
		}, want: "decompress"},
		{name: "flipped byte, uncompressed", compression: "none", mangle: func(b []byte) []byte { b[len(b)/3] ^= 0x10; return b }, want: "trailer does not match"},
		{name: "truncated, gzip", compression: "gzip", mangle: func(b []byte) []byte { return b[:len(b)-1000] }, want: "stored size"},
		{name: "truncated, uncompressed", compression: "none", mangle: func(b []byte) []byte { return b[:len(b)-4096] }, want: "size"},
		{name: "wrong manifest sha256", compression: "zstd", manifest: func(m *Manifest) { m.SHA256 = strings.Repeat("0", 64) }, want: "sha256"},
		{name: "wrong manifest revision", compression: "zstd", manifest: func(m *Manifest) { m.Revision++ }, want: "revision"},
		// Corrupt ciphertext is a failed verification, never a store error that leaves the
		// snapshot counted as good.
		{name: "flipped byte in the payload, age", compression: "zstd", encrypted: true, mangle: func(b []byte) []byte { b[len(b)/2] ^= 1; return b }, want: "cannot decrypt"},
		{name: "damaged header, age", compression: "none", encrypted: true, mangle: func(b []byte) []byte { b[40] ^= 1; return b }, want: "cannot decrypt"},
		{name: "truncated, age", compression: "zstd", encrypted: true, mangle: func(b []byte) []byte { return b[:len(b)-1000] }, want: "cannot decrypt"},
	}
	key, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "id")
	if err := os.WriteFile(keyFile, []byte(key.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	to := must(crypt.ParseRecipients([]string{key.Recipient().String()}, nil))
	ids := must(crypt.LoadIdentities(keyFile))
	for _, b := range backends() {
		for _, tc := range cases {
			t.Run(b.name+"/"+tc.name, func(t *testing.T) {
				raw, _ := b.open(t)
				st := raw
				if tc.encrypted {
					st = crypt.Wrap(raw, to, ids)
				}
				m := save(t, cli, e, st, tc.compression)
				if tc.mangle != nil {
					b.rewriter(t, raw, m.Object, tc.mangle)
				}
				if tc.manifest != nil {
					tc.manifest(m)
				}
				rep, err := Verify(context.Background(), st, m)
				if err != nil {
					t.Fatalf("verify: %v", err)
				}
				if rep.OK || !strings.Contains(strings.Join(rep.Problems, "; "), tc.want) {
					t.Fatalf("verify = ok %v problems %q; want a problem mentioning %q", rep.OK, rep.Problems, tc.want)
				}
			})
		}
	}
}

func TestFindUnknownIDNamesNearest(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st, _ := backends()[0].open(t)
	m := save(t, cli, e, st, "zstd")
	_, err := Find(context.Background(), st, "c1", "20200101T000000Z-abcdef")
	if !errors.Is(err, store.ErrNotExist) || !strings.Contains(err.Error(), m.ID) {
		t.Fatalf("find unknown id: %v; want not-exist naming %s", err, m.ID)
	}
	got, err := Find(context.Background(), st, "c1", "latest")
	if err != nil || got.ID != m.ID {
		t.Fatalf("find latest = %v, %v", got, err)
	}
	if _, err := Find(context.Background(), st, "other", "latest"); !errors.Is(err, ErrNoSnapshots) {
		t.Fatalf("find in empty cluster: %v", err)
	}
}

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

// getFails is a store whose reads of manifests fail, as a store returning 503s does.
type getFails struct{ store.Store }

func (g getFails) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasSuffix(key, manifestExt) {
		return nil, errors.New("503 SlowDown")
	}
	return g.Store.Get(ctx, key)
}

// A manifest the store fails to return fails the listing: skipped, the newest snapshot
// would drop out of `restore --snapshot latest` and the freshness check would say the
// snapshots are gone. One whose content is bad is skipped.
func TestListFailsWhenTheStoreFailsARead(t *testing.T) {
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m := &Manifest{ID: "20261130T000000Z-abcdef", Cluster: "c1", CreatedAt: time.Now(), Object: objectKey("c1", "20261130T000000Z-abcdef", "zstd")}
	if err := writeManifest(ctx, fs, m); err != nil {
		t.Fatal(err)
	}
	if err := store.PutBytes(ctx, fs, "c1/snapshots/20261129T000000Z-bad000.json", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if list, err := List(ctx, fs, "c1"); err != nil || len(list) != 1 {
		t.Fatalf("with one bad manifest: %v, %v; want the good one alone", list, err)
	}
	if list, err := List(ctx, getFails{fs}, "c1"); err == nil || !strings.Contains(err.Error(), "503 SlowDown") {
		t.Fatalf("with reads failing: %v, %v; want the store's error", list, err)
	}
}

// An identity that is not a recipient's (here a post-quantum one) is the identity's
// problem: verify says so, and never records the snapshot as failed.
func TestVerifyWithAnotherIdentityIsNoFinding(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	raw, _ := backends()[0].open(t)
	x := must(age.GenerateX25519Identity())
	m := save(t, cli, e, crypt.Wrap(raw, must(crypt.ParseRecipients([]string{x.Recipient().String()}, nil)), nil), "zstd")
	pq := must(age.GenerateHybridIdentity())
	file := filepath.Join(t.TempDir(), "pq")
	if err := os.WriteFile(file, []byte(pq.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(context.Background(), crypt.Wrap(raw, nil, must(crypt.LoadIdentities(file))), m)
	if !errors.Is(err, crypt.ErrNoIdentity) || rep != nil {
		t.Fatalf("verify with another identity: report %+v, err %v; want ErrNoIdentity and no report", rep, err)
	}
}

// A save killed between its object and its manifest leaves an object nothing lists: the
// next save with --stale-upload-age removes it once it is older than that, and leaves
// alone a younger one (a save in progress writes its manifest a moment later) and every
// object a manifest names.
func TestSaveRemovesObjectsWithoutManifest(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	dir := t.TempDir()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	kept := save(t, cli, e, st, "zstd")
	old, young := "c1/snapshots/20200101T000000Z-0ld0bj.db.zst", "c1/snapshots/20200101T000001Z-y0ung0.db.zst.age"
	for _, k := range []string{old, young} {
		if err := store.PutBytes(context.Background(), st, k, []byte("an interrupted save's object")); err != nil {
			t.Fatal(err)
		}
	}
	twoHoursAgo := time.Now().Add(-2 * time.Hour)
	for _, k := range []string{old, kept.Object} {
		if err := os.Chtimes(filepath.Join(dir, k), twoHoursAgo, twoHoursAgo); err != nil {
			t.Fatal(err)
		}
	}
	saveAgain := func() {
		t.Helper()
		if _, err := Save(context.Background(), cli, st, SaveOptions{Cluster: "c1", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "fastest", StaleUploadAge: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	// The first look only marks: an object's date cannot tell a leftover from a save
	// about to write its manifest (S3 dates a multipart object by its upload's start).
	saveAgain()
	for _, k := range []string{old, young, kept.Object} {
		if _, err := st.Stat(context.Background(), k); err != nil {
			t.Errorf("%s was removed at the first look: %v", k, err)
		}
	}
	// An hour later, the marked object without a manifest goes, with its marker.
	if err := os.Chtimes(filepath.Join(dir, orphanKey("c1", "20200101T000000Z-0ld0bj")), twoHoursAgo, twoHoursAgo); err != nil {
		t.Fatal(err)
	}
	saveAgain()
	for _, k := range []string{old, orphanKey("c1", "20200101T000000Z-0ld0bj")} {
		if _, err := st.Stat(context.Background(), k); !errors.Is(err, store.ErrNotExist) {
			t.Errorf("%s, an hour after it was marked without a manifest: stat err = %v, want it removed", k, err)
		}
	}
	for _, k := range []string{young, orphanKey("c1", "20200101T000001Z-y0ung0"), kept.Object} {
		if _, err := st.Stat(context.Background(), k); err != nil {
			t.Errorf("%s was removed: %v", k, err)
		}
	}
	if list, err := List(context.Background(), st, "c1"); err != nil || len(list) != 3 || list[1].Verification == Missing {
		t.Errorf("list = %v, %v; want the three saves, complete", list, err)
	}
}

// A save that completes its object while another save looks for leftovers is marked, not
// removed, and its marker goes once its manifest is there.
func TestOrphanMarkerOfASaveThatFinishes(t *testing.T) {
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	obj := "c1/snapshots/20200101T000000Z-s1ow00.db.zst"
	if err := store.PutBytes(ctx, st, obj, []byte("a save's object, its manifest not yet written")); err != nil {
		t.Fatal(err)
	}
	if n, err := removeOrphans(ctx, st, "c1", 0); err != nil || n != 0 {
		t.Fatalf("first look = %d, %v; want nothing removed", n, err)
	}
	if err := store.PutBytes(ctx, st, manifestKey("c1", "20200101T000000Z-s1ow00"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if n, err := removeOrphans(ctx, st, "c1", 0); err != nil || n != 0 {
		t.Fatalf("second look = %d, %v; want nothing removed: the manifest is there", n, err)
	}
	if _, err := st.Stat(ctx, obj); err != nil {
		t.Errorf("the finished save's object was removed: %v", err)
	}
	if _, err := st.Stat(ctx, orphanKey("c1", "20200101T000000Z-s1ow00")); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("the marker stayed after the manifest came: %v", err)
	}
}
