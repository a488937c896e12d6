// Package crypt encrypts what etcdguard stores with age (filippo.io/age), on the node,
// before it leaves: an etcd snapshot holds every Secret of a Kubernetes cluster, and whoever
// reads the bucket must not own the cluster. Store wraps a store.Store: objects put under a
// key ending in store.EncryptedExt are encrypted to the recipients as they stream, and read
// back decrypted with the identities. Nodes that only write need only public keys; the
// identity (private key) stays with whoever restores.
package crypt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/etcdguard/etcdguard/store"
)

// ErrCorrupt is returned (wrapped) when stored ciphertext does not authenticate: changed or
// truncated in the store. A failure to read the store is returned as itself, not as this.
var ErrCorrupt = errors.New("the encrypted object does not decrypt (changed or truncated in the store)")

// ErrNoIdentity is returned (wrapped) when an encrypted object is read without an identity
// that opens it.
var ErrNoIdentity = errors.New("no identity that can decrypt it")

// Recipients are the public keys objects are encrypted to.
type Recipients struct {
	keys []string // as given: what manifests record
	list []age.Recipient
}

// ParseRecipients reads age public keys (age1...) given one by one and in files of one per
// line (# comments and blank lines skipped), as age -r and -R take them.
func ParseRecipients(keys, files []string) (*Recipients, error) {
	r := &Recipients{}
	add := func(s, from string) error {
		s = strings.TrimSpace(s)
		if s == "" || strings.HasPrefix(s, "#") {
			return nil
		}
		if strings.HasPrefix(strings.ToUpper(s), "AGE-SECRET-KEY-") {
			// Never echo it: it is the private key, given where the public one belongs.
			return fmt.Errorf("%s holds an age identity (a private key), not a recipient: give its public key, `age-keygen -y IDENTITY_FILE` prints it", from)
		}
		list, err := age.ParseRecipients(strings.NewReader(s))
		if err != nil || len(list) != 1 {
			return fmt.Errorf("invalid age recipient %q in %s: want a public key like age1...: %v", s, from, err)
		}
		if !slices.Contains(r.keys, s) {
			r.keys, r.list = append(r.keys, s), append(r.list, list[0])
		}
		return nil
	}
	for _, k := range keys {
		if err := add(k, "--encrypt-recipient"); err != nil {
			return nil, err
		}
	}
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("--encrypt-recipients-file: %w", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if err := add(sc.Text(), path); err != nil {
				f.Close()
				return nil, err
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading recipients file %s: %w", path, err)
		}
	}
	if len(r.list) == 0 {
		return nil, nil
	}
	return r, nil
}

// Keys are the recipients' public keys, for manifests.
func (r *Recipients) Keys() []string {
	if r == nil {
		return nil
	}
	return slices.Clone(r.keys)
}

// Identities are private keys that decrypt objects.
type Identities struct {
	path string
	list []age.Identity
	keys []string // the public keys they open, where age can say
}

// LoadIdentities reads an age identity file (age-keygen's output; several keys allowed).
// The path is named in errors, the keys never are.
func LoadIdentities(path string) (*Identities, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--identity-file: %w", err)
	}
	defer f.Close()
	list, err := age.ParseIdentities(f)
	if err != nil {
		// age's parse errors can quote the line, which would be the key itself.
		return nil, fmt.Errorf("--identity-file %s holds no valid age identity: want age-keygen's output (AGE-SECRET-KEY-1...)", path)
	}
	ids := &Identities{path: path, list: list}
	for _, id := range list {
		switch x := id.(type) {
		case *age.X25519Identity:
			ids.keys = append(ids.keys, x.Recipient().String())
		case *age.HybridIdentity: // post-quantum (age1pq...)
			ids.keys = append(ids.keys, x.Recipient().String())
		}
	}
	return ids, nil
}

// CanOpen says, before anything is read or written, whether these identities open an
// object encrypted to recipients, and if not which keys it needs.
func (ids *Identities) CanOpen(what string, recipients []string) error {
	if ids == nil {
		return fmt.Errorf("%s is encrypted with age to %s: %w: pass --identity-file with one of their private keys (or ETCDGUARD_IDENTITY_FILE)",
			what, strings.Join(recipients, ", "), ErrNoIdentity)
	}
	if len(ids.keys) < len(ids.list) || ids.opens(recipients) { // a kind age cannot name the public key of: try it
		return nil
	}
	return fmt.Errorf("%s is encrypted with age to %s: %w: --identity-file %s opens %s instead",
		what, strings.Join(recipients, ", "), ErrNoIdentity, ids.path, strings.Join(ids.keys, ", "))
}

// opens says whether one of these identities' public keys is among recipients.
func (ids *Identities) opens(recipients []string) bool {
	return ids != nil && slices.ContainsFunc(ids.keys, func(k string) bool { return slices.Contains(recipients, k) })
}

// identities are the identities st reads with, nil if none.
func identities(st store.Store) *Identities {
	if s, ok := st.(*Store); ok {
		return s.Identities
	}
	return nil
}

// Store encrypts and decrypts the objects of st whose key ends in store.EncryptedExt.
type Store struct {
	store.Store
	Recipients *Recipients // nil: this process writes nothing encrypted
	Identities *Identities // nil: it reads nothing encrypted
}

// Wrap returns st, with encryption if recipients or identities are given.
func Wrap(st store.Store, r *Recipients, ids *Identities) store.Store {
	if r == nil && ids == nil {
		return st
	}
	return &Store{Store: st, Recipients: r, Identities: ids}
}

// EncryptTo implements store.Encrypting: callers name their objects with
// store.EncryptedExt and record these keys when it returns some.
func (s *Store) EncryptTo() []string { return s.Recipients.Keys() }

func encrypted(key string) bool { return strings.HasSuffix(key, store.EncryptedExt) }

// Put encrypts r as it streams to key when the key says so; it returns the bytes stored.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if !encrypted(key) {
		return s.Store.Put(ctx, key, r)
	}
	if s.Recipients == nil {
		return 0, fmt.Errorf("putting %s: it is named as encrypted, but no --encrypt-recipient is set", key)
	}
	er, err := age.EncryptReader(r, s.Recipients.list...)
	if err != nil {
		return 0, fmt.Errorf("encrypting %s: %w", key, err)
	}
	return s.Store.Put(ctx, key, er)
}

// Get decrypts key when the key says so. A wrong or missing identity fails here, before
// the caller reads a byte.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if !encrypted(key) {
		return s.Store.Get(ctx, key)
	}
	if s.Identities == nil {
		return nil, fmt.Errorf("reading %s from %s: it is encrypted with age: %w: pass --identity-file (or ETCDGUARD_IDENTITY_FILE)", key, s.Store, ErrNoIdentity)
	}
	rc, err := s.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	counted := &counter{r: rc}
	dr, err := age.Decrypt(counted, s.Identities.list...)
	if err != nil {
		rc.Close()
		if counted.err != nil { // the store failed while the header was read
			return nil, fmt.Errorf("reading %s from %s: %w", key, s.Store, counted.err)
		}
		if nm := (*age.NoIdentityMatchError)(nil); errors.As(err, &nm) {
			return nil, fmt.Errorf("reading %s from %s: %w in --identity-file %s", key, s.Store, ErrNoIdentity, s.Identities.path)
		}
		return nil, fmt.Errorf("decrypting %s from %s: %w: %v", key, s.Store, ErrCorrupt, err)
	}
	return &decrypted{Reader: dr, Closer: rc, stored: counted}, nil
}

// decrypted reads the plaintext and counts the stored bytes, so a verification can check
// the stored size the manifest records (store.StoredSizer).
type decrypted struct {
	io.Reader
	io.Closer
	stored *counter
}

func (d *decrypted) StoredSize() int64 { return d.stored.n }

func (d *decrypted) Read(p []byte) (int, error) {
	n, err := d.Reader.Read(p)
	if err != nil && err != io.EOF {
		if d.stored.err != nil { // the store failed, not the data
			return n, d.stored.err
		}
		return n, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return n, err
}

// counter counts the stored bytes read and keeps the store's own read error apart from
// age's verdict on them.
type counter struct {
	r   io.Reader
	n   int64
	err error
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// Matches says whether st holds an identity whose public key is among recipients: then a
// header it cannot open was damaged, not encrypted to someone else.
func Matches(st store.Store, recipients []string) bool { return identities(st).opens(recipients) }

// CanRead says, before anything is read or written, whether st holds identities that open
// what (an object encrypted to recipients), and if not which keys it needs.
func CanRead(st store.Store, what string, recipients []string) error {
	return identities(st).CanOpen(what, recipients)
}

// policyKey records that a cluster's backups are encrypted, to whom, and which command
// said so. Written by the first encrypted snapshot, it makes every later write without
// recipients a refusal: one `snapshot save` or daemon run without the config would
// otherwise put a whole snapshot, or every deleted value, in the clear next to the
// encrypted ones.
func policyKey(cluster string) string { return cluster + "/encryption.json" }

// ErrPolicy is returned (wrapped) when the cluster's backups are encrypted and this
// process has no recipients.
var ErrPolicy = errors.New("the cluster's backups are encrypted and this process has no --encrypt-recipient")

type policy struct {
	Encryption string    `json:"encryption"`
	Recipients []string  `json:"recipients"`
	By         string    `json:"by"` // host and command, for whoever finds it surprising
	At         time.Time `json:"at"`
}

// CheckWrite is called before a process writes values of cluster to st. Without recipients
// it refuses if the cluster is encrypted. With them, and record set (snapshots: the
// daemon's or a `snapshot save`, never a one-off delete), it records that it is.
func CheckWrite(ctx context.Context, st store.Store, cluster, by string, record bool) error {
	to := store.EncryptTo(st)
	b, err := store.ReadAll(ctx, st, policyKey(cluster), 1<<20)
	switch {
	case errors.Is(err, store.ErrNotExist):
		if len(to) == 0 || !record {
			return nil
		}
		rec, _ := json.MarshalIndent(policy{Encryption: "age", Recipients: to, By: by, At: time.Now().UTC()}, "", "  ")
		if err := store.PutBytes(ctx, st, policyKey(cluster), rec); err != nil {
			return fmt.Errorf("recording that cluster %s is encrypted (%s): %w", cluster, policyKey(cluster), err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("reading %s: %w", policyKey(cluster), err)
	case len(to) > 0:
		return nil
	}
	var p policy
	if err := json.Unmarshal(b, &p); err != nil || len(p.Recipients) == 0 {
		return fmt.Errorf("%w: %s is not a valid record (%v): fix or delete it", ErrPolicy, policyKey(cluster), err)
	}
	return fmt.Errorf("%w: %s says cluster %s is encrypted to %s (recorded by %s at %s); storing values in the clear is refused: give this process the same --encrypt-recipient (for the daemon: its config file, then restart it), or delete %s to stop encrypting on purpose",
		ErrPolicy, policyKey(cluster), cluster, strings.Join(p.Recipients, ", "), p.By, p.At.Format(time.RFC3339), policyKey(cluster))
}
