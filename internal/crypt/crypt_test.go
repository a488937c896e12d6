package crypt

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

func newKey(t *testing.T) (*age.X25519Identity, string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "identity.txt")
	if err := os.WriteFile(path, []byte("# created: test\n"+id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return id, path
}

func TestParseRecipients(t *testing.T) {
	a, _ := newKey(t)
	b, _ := newKey(t)
	file := filepath.Join(t.TempDir(), "recipients.txt")
	if err := os.WriteFile(file, []byte("# ops team\n\n"+b.Recipient().String()+"\n"+a.Recipient().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		keys      []string
		files     []string
		want      []string
		wantErr   string
		notInErrs string
	}{
		{name: "none", want: nil},
		{name: "flag and file, deduplicated", keys: []string{a.Recipient().String()}, files: []string{file},
			want: []string{a.Recipient().String(), b.Recipient().String()}},
		{name: "a private key where the public one belongs", keys: []string{a.String()},
			wantErr: "holds an age identity (a private key), not a recipient", notInErrs: a.String()},
		{name: "not a key", keys: []string{"age1nope"}, wantErr: `invalid age recipient "age1nope"`},
		{name: "missing file", files: []string{"/nonexistent/recipients"}, wantErr: "--encrypt-recipients-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRecipients(tc.keys, tc.files)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				if tc.notInErrs != "" && strings.Contains(err.Error(), tc.notInErrs) {
					t.Fatalf("the error shows the private key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Keys(); strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("keys %v, want %v", got, tc.want)
			}
		})
	}
}

// The store encrypts what is named .age as it streams, stores nothing readable, and reads
// it back only with an identity of a recipient; corruption and a failing store are told apart.
func TestStore(t *testing.T) {
	ctx := context.Background()
	alice, alicePath := newKey(t)
	_, evePath := newKey(t)
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	to, err := ParseRecipients([]string{alice.Recipient().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	writer := Wrap(fs, to, nil)
	if got := store.EncryptTo(writer); len(got) != 1 || got[0] != alice.Recipient().String() {
		t.Fatalf("EncryptTo = %v", got)
	}
	secret := bytes.Repeat([]byte("the etcd snapshot holds every Secret "), 10000)
	n, err := writer.Put(ctx, "c/snapshots/x.db.zst.age", bytes.NewReader(secret))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := store.ReadAll(ctx, fs, "c/snapshots/x.db.zst.age", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(raw)) != n || !bytes.HasPrefix(raw, []byte("age-encryption.org/v1\n")) || bytes.Contains(raw, []byte("every Secret")) {
		t.Fatalf("stored %d bytes (Put said %d), starting %q: want age's format and no plaintext", len(raw), n, raw[:min(40, len(raw))])
	}
	// Keys not named .age stay as they are: manifests must be readable by every node.
	if _, err := writer.Put(ctx, "c/snapshots/x.json", strings.NewReader(`{"id":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if b, _ := store.ReadAll(ctx, fs, "c/snapshots/x.json", 100); string(b) != `{"id":"x"}` {
		t.Errorf("a manifest was changed: %q", b)
	}

	read := func(st store.Store) ([]byte, int64, error) {
		rc, err := st.Get(ctx, "c/snapshots/x.db.zst.age")
		if err != nil {
			return nil, 0, err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		return b, rc.(store.StoredSizer).StoredSize(), err
	}
	aliceIDs, err := LoadIdentities(alicePath)
	if err != nil {
		t.Fatal(err)
	}
	got, stored, err := read(Wrap(fs, nil, aliceIDs))
	if err != nil || !bytes.Equal(got, secret) || stored != n {
		t.Fatalf("read back %d bytes (stored size %d of %d): %v", len(got), stored, n, err)
	}
	if err := aliceIDs.CanOpen("snapshot x", []string{alice.Recipient().String()}); err != nil {
		t.Errorf("CanOpen with the recipient's identity: %v", err)
	}

	eveIDs, err := LoadIdentities(evePath)
	if err != nil {
		t.Fatal(err)
	}
	for name, st := range map[string]store.Store{"no identity": Wrap(fs, to, nil), "another identity": Wrap(fs, nil, eveIDs)} {
		if _, _, err := read(st); !errors.Is(err, ErrNoIdentity) {
			t.Errorf("%s: read %v, want ErrNoIdentity", name, err)
		}
	}
	err = eveIDs.CanOpen("snapshot x", []string{alice.Recipient().String()})
	if !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), alice.Recipient().String()) || !strings.Contains(err.Error(), evePath) {
		t.Errorf("CanOpen with another identity: %v; want the recipients and the file named", err)
	}

	// One flipped byte in the payload: it does not authenticate.
	raw[len(raw)-100] ^= 1
	if err := store.PutBytes(ctx, fs, "c/snapshots/x.db.zst.age", raw); err != nil {
		t.Fatal(err)
	}
	if _, _, err := read(Wrap(fs, nil, aliceIDs)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("read of a changed object: %v, want ErrCorrupt", err)
	}
	// A store that fails mid-read is the store's error, not corruption.
	raw[len(raw)-100] ^= 1
	if err := store.PutBytes(ctx, fs, "c/snapshots/x.db.zst.age", raw); err != nil {
		t.Fatal(err)
	}
	if _, _, err := read(Wrap(failingReads{fs}, nil, aliceIDs)); errors.Is(err, ErrCorrupt) || err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Errorf("read from a failing store: %v, want its own error", err)
	}
}

func TestLoadIdentitiesNeverShowsTheKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad")
	const line = "AGE-SECRET-KEY-1NOTAVALIDKEYBUTSECRETLOOKING"
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadIdentities(path)
	if err == nil || strings.Contains(err.Error(), line) || !strings.Contains(err.Error(), path) {
		t.Fatalf("err %v: want the file named and the line not shown", err)
	}
}

// failingReads is a store whose reads break after a few KiB, as a reset connection does.
type failingReads struct{ store.Store }

func (f failingReads) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := f.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, 4096), errReader{}), rc}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) {
	return 0, errors.New("read tcp: connection reset by peer")
}
