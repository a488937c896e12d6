package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/store"
)

// CorruptError lists every way a snapshot's data disagrees with its manifest.
type CorruptError struct {
	Object   string
	Problems []string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("snapshot %s is corrupt: %s; use another snapshot (`etcdguard snapshot list`)",
		e.Object, strings.Join(e.Problems, "; "))
}

// Checked is what reading a snapshot back proved.
type Checked struct {
	StoredSize int64  `json:"stored_size"`
	DBSize     int64  `json:"db_size"`
	SHA256     string `json:"sha256"`
	Revision   int64  `json:"revision"`
}

// ioError marks errors of the source or the destination, so that they are reported as
// what they are (store unreachable, disk full) and not as corruption.
type ioError struct{ err error }

func (e ioError) Error() string { return e.err.Error() }
func (e ioError) Unwrap() error { return e.err }

// countingReader also stops at cancellation, which a local file does not watch by itself.
type countingReader struct {
	ctx context.Context
	r   io.Reader
	n   int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, ioError{err}
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	// Ciphertext that does not authenticate is the data's fault, not the store's.
	if err != nil && err != io.EOF && !errors.Is(err, crypt.ErrCorrupt) {
		err = ioError{err}
	}
	return n, err
}

type markingWriter struct{ w io.Writer }

func (m markingWriter) Write(p []byte) (int, error) {
	n, err := m.w.Write(p)
	if err != nil {
		err = ioError{err}
	}
	return n, err
}

// ReadVerified decompresses the stored object r into w, the raw etcd snapshot, and checks
// stored size, size, sha256, etcd's trailer and the revision inside against m. Bad data
// returns a *CorruptError (after the whole object was read, listing every problem); a
// failure to read r or write w returns that error.
func ReadVerified(ctx context.Context, r io.Reader, m *Manifest, w io.Writer) (Checked, error) {
	src := &countingReader{ctx: ctx, r: r}
	var problems []string
	d := newDigestBehind()
	defer d.stop()
	dec, err := newDecoder(src, m.Compression)
	if err == nil {
		_, err = io.CopyBuffer(io.MultiWriter(d, markingWriter{w}), dec, make([]byte, 256<<10))
		dec.Close()
	}
	if err != nil {
		if errors.As(err, new(ioError)) {
			return Checked{}, err
		}
		if m.Encryption == "age" {
			problems = append(problems, fmt.Sprintf("cannot decrypt (age) and decompress (%s): %v", m.Compression, err))
		} else {
			problems = append(problems, fmt.Sprintf("cannot decompress (%s): %v", m.Compression, err))
		}
	}
	// Count what the decoder did not read, so a stored-size mismatch is always reported.
	// Past a ciphertext that does not authenticate there is nothing more to read.
	if _, err := io.Copy(io.Discard, src); err != nil && !errors.Is(err, crypt.ErrCorrupt) {
		return Checked{}, err
	}
	if err := ctx.Err(); err != nil {
		return Checked{}, err
	}
	res, derr := d.finish()
	c := Checked{StoredSize: src.n, DBSize: res.Size, SHA256: res.SHA256, Revision: res.Revision}
	if s, ok := r.(store.StoredSizer); ok { // decrypted: what the store holds is the ciphertext
		c.StoredSize = s.StoredSize()
	}
	if c.StoredSize != m.StoredSize {
		problems = append(problems, fmt.Sprintf("stored size %d, manifest says %d", c.StoredSize, m.StoredSize))
	}
	if c.DBSize != m.DBSize {
		problems = append(problems, fmt.Sprintf("size %d, manifest says %d", c.DBSize, m.DBSize))
	}
	if c.SHA256 != m.SHA256 {
		problems = append(problems, fmt.Sprintf("sha256 %s, manifest says %s", c.SHA256, m.SHA256))
	}
	if derr != nil {
		problems = append(problems, derr.Error())
	} else if c.Revision != m.Revision {
		problems = append(problems, fmt.Sprintf("revision %d, manifest says %d", c.Revision, m.Revision))
	}
	if len(problems) > 0 {
		return c, &CorruptError{Object: m.Object, Problems: problems}
	}
	return c, nil
}

// VerifyReport is the outcome of Verify; its JSON form is `snapshot verify -o json`.
type VerifyReport struct {
	ID       string   `json:"id"`
	Cluster  string   `json:"cluster"`
	Object   string   `json:"object"`
	OK       bool     `json:"ok"`
	Problems []string `json:"problems"`
	Checked
}

// Verify streams a stored snapshot back and checks it (see ReadVerified). Corruption is a
// report with OK false; the error is for failing to read it at all.
func Verify(ctx context.Context, st store.Store, m *Manifest) (*VerifyReport, error) {
	if err := CanRead(st, m); err != nil {
		return nil, err
	}
	rc, err := st.Get(ctx, m.Object)
	if err != nil {
		if errors.Is(err, store.ErrNotExist) {
			return &VerifyReport{ID: m.ID, Cluster: m.Cluster, Object: m.Object,
				Problems: []string{"object " + m.Object + " is missing"}}, nil
		}
		// A damaged age header: corrupt, or a recipient stanza that no longer opens for an
		// identity that is among the manifest's recipients. Any other identity failing is
		// the identity's problem, never the snapshot's (a failed verification is recorded).
		if errors.Is(err, crypt.ErrCorrupt) || errors.Is(err, crypt.ErrNoIdentity) && crypt.Matches(st, m.Recipients) {
			return &VerifyReport{ID: m.ID, Cluster: m.Cluster, Object: m.Object,
				Problems: []string{"cannot decrypt (age): " + err.Error()}}, nil
		}
		return nil, fmt.Errorf("opening snapshot %s: %w", m.Object, err)
	}
	defer rc.Close()
	c, err := ReadVerified(ctx, rc, m, io.Discard)
	rep := &VerifyReport{ID: m.ID, Cluster: m.Cluster, Object: m.Object, Checked: c, Problems: []string{}}
	var corrupt *CorruptError
	switch {
	case errors.As(err, &corrupt):
		rep.Problems = corrupt.Problems
	case err != nil:
		return nil, fmt.Errorf("reading snapshot %s from %s: %w", m.Object, st, err)
	}
	rep.OK = len(rep.Problems) == 0
	return rep, nil
}

// CanRead says whether st can read m's object: an encrypted one needs an identity of one of
// its recipients. Callers ask before they write anything.
func CanRead(st store.Store, m *Manifest) error {
	if m.Encryption != "age" {
		return nil
	}
	return crypt.CanRead(st, "snapshot "+m.ID, m.Recipients)
}
