package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
)

func TestOpenValidatesSecurityOptions(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(keyFile, []byte("not a key"), 0o600)
	for _, c := range []struct {
		opts store.Options
		want string
	}{
		{store.Options{S3ObjectLockMode: "GOVERNANCE"}, "needs --s3-object-lock-retain"},
		{store.Options{S3ObjectLockRetain: time.Hour}, "needs --s3-object-lock-mode"},
		{store.Options{S3ObjectLockMode: "forever", S3ObjectLockRetain: time.Hour}, "use GOVERNANCE or COMPLIANCE"},
		{store.Options{S3SSECKeyFile: keyFile, S3SSE: "AES256"}, "exclude each other"},
		{store.Options{S3SSECKeyFile: keyFile}, "want a 32-byte AES-256 key"},
		{store.Options{S3SSECKeyFile: filepath.Join(t.TempDir(), "missing")}, "--s3-sse-c-key-file"},
	} {
		_, err := Open(context.Background(), "b", "", c.opts)
		if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: got %v, want one line with %q", c.opts, err, c.want)
		}
	}
}

// A bucket made without Object Lock would refuse every upload that asks for retention:
// Open says so, and how to fix it, before the first backup.
func TestOpenObjectLockNeedsLockedBucket(t *testing.T) {
	srv := testharness.StartMinIO(t)
	_, err := New(context.Background(), srv.Client(t), srv.Bucket, "", store.Options{S3ObjectLockMode: "GOVERNANCE", S3ObjectLockRetain: time.Hour})
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "put-object-lock-configuration") {
		t.Fatalf("got %v, want advice to enable Object Lock", err)
	}
}

func TestObjectLock(t *testing.T) {
	srv := testharness.StartMinIOWith(t, testharness.MinIOOptions{ObjectLock: true})
	ctx := context.Background()
	cli := srv.Client(t)
	st, err := New(ctx, cli, srv.Bucket, "locked", store.Options{S3ObjectLockMode: "GOVERNANCE", S3ObjectLockRetain: time.Hour, PartSize: MinPartSize})
	if err != nil {
		t.Fatal(err)
	}
	plain := NewFromClient(cli, srv.Bucket, "locked", store.Options{})

	// One small object (PutObject) and one of two parts (multipart upload).
	small, big := []byte("manifest"), make([]byte, MinPartSize+100)
	rand.Read(big)
	for key, b := range map[string][]byte{"small": small, "big": big} {
		if _, err := st.Put(ctx, key, bytes.NewReader(b)); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		info, err := st.Stat(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Until(info.RetainUntil); d < 59*time.Minute || d > 61*time.Minute || !info.Locked(time.Now()) {
			t.Errorf("%s retained until %v, want in an hour", key, info.RetainUntil)
		}
		head, err := cli.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: aws.String("locked/" + key)})
		if err != nil || head.ObjectLockMode != types.ObjectLockModeGovernance {
			t.Errorf("%s: lock mode %q (%v), want GOVERNANCE", key, head.ObjectLockMode, err)
		}
	}
	if _, err := plain.Put(ctx, "unlocked", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if info, err := plain.Stat(ctx, "unlocked"); err != nil || info.Locked(time.Now()) {
		t.Errorf("an object written without retention: %+v, %v", info, err)
	}

	// Deleting the version itself is what the lock refuses; the store reports ErrLocked.
	head, err := cli.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: aws.String("locked/big")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &srv.Bucket, Key: aws.String("locked/big"), VersionId: head.VersionId})
	if err == nil {
		t.Fatal("deleting a locked version succeeded")
	}
	if err := st.objectErr("delete", "big", err); !errors.Is(err, store.ErrLocked) || errors.Is(err, store.ErrAccessDenied) {
		t.Errorf("refused delete of a locked version reads as %v, want ErrLocked", err)
	}
	// A plain delete only hides it behind a delete marker: the data stays readable by version.
	if err := st.Delete(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, "big"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("after delete: %v, want not found", err)
	}
	obj, err := cli.GetObject(ctx, &s3.GetObjectInput{Bucket: &srv.Bucket, Key: aws.String("locked/big"), VersionId: head.VersionId})
	if err != nil {
		t.Fatalf("the locked version is gone: %v", err)
	}
	got, _ := io.ReadAll(obj.Body)
	obj.Body.Close()
	if !bytes.Equal(got, big) {
		t.Error("the locked version's data changed")
	}
}

func writeKey(t *testing.T, b64 bool) string {
	key := make([]byte, 32)
	rand.Read(key)
	p := filepath.Join(t.TempDir(), "sse-c.key")
	data := key
	if b64 {
		data = []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The server applies each kind of encryption we ask for, on single and multipart uploads,
// and says so when asked.
func TestServerSideEncryption(t *testing.T) {
	srv := testharness.StartMinIOWith(t, testharness.MinIOOptions{KMS: true, TLS: true})
	ctx := context.Background()
	cli := srv.Client(t)
	big := make([]byte, MinPartSize+100)
	rand.Read(big)
	for _, c := range []struct {
		name string
		opts store.Options
		want func(*s3.HeadObjectOutput) bool
	}{
		{"sse-s3", store.Options{S3SSE: "AES256"}, func(h *s3.HeadObjectOutput) bool { return h.ServerSideEncryption == types.ServerSideEncryptionAes256 }},
		{"sse-kms", store.Options{S3SSE: "aws:kms", S3KMSKeyID: srv.KMSKey}, func(h *s3.HeadObjectOutput) bool {
			return h.ServerSideEncryption == types.ServerSideEncryptionAwsKms && strings.HasSuffix(aws.ToString(h.SSEKMSKeyId), srv.KMSKey)
		}},
		{"sse-c-raw", store.Options{S3SSECKeyFile: writeKey(t, false)}, nil},
		{"sse-c-base64", store.Options{S3SSECKeyFile: writeKey(t, true)}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.opts.PartSize = MinPartSize
			st, err := New(ctx, cli, srv.Bucket, c.name, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			for key, b := range map[string][]byte{"small": []byte("manifest"), "big": big} {
				if _, err := st.Put(ctx, key, bytes.NewReader(b)); err != nil {
					t.Fatalf("put %s: %v", key, err)
				}
				rc, err := st.Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, b) {
					t.Fatalf("%s read back %d bytes (%v), want %d", key, len(got), err, len(b))
				}
				if info, err := st.Stat(ctx, key); err != nil || info.Size != int64(len(b)) {
					t.Fatalf("stat %s: %+v %v", key, info, err)
				}
				in := &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: aws.String(c.name + "/" + key)}
				in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = st.customerKey()
				h, err := cli.HeadObject(ctx, in)
				if err != nil {
					t.Fatal(err)
				}
				if c.want != nil && !c.want(h) {
					t.Errorf("%s: server says encryption %q key %q", key, h.ServerSideEncryption, aws.ToString(h.SSEKMSKeyId))
				}
				if c.opts.S3SSECKeyFile != "" && aws.ToString(h.SSECustomerAlgorithm) != "AES256" {
					t.Errorf("%s: server says SSE-C algorithm %q", key, aws.ToString(h.SSECustomerAlgorithm))
				}
			}
			if c.opts.S3SSECKeyFile == "" {
				return
			}
			// Without the key, or with another one, reading fails on one line naming the flag.
			keyless := NewFromClient(cli, srv.Bucket, c.name, store.Options{})
			other := NewFromClient(cli, srv.Bucket, c.name, store.Options{S3SSECKeyFile: writeKey(t, false)})
			for _, wrong := range []*Store{keyless, other} {
				_, gerr := wrong.Get(ctx, "big")
				_, serr := wrong.Stat(ctx, "small")
				for _, err := range []error{gerr, serr} {
					if err == nil || !strings.Contains(err.Error(), "--s3-sse-c-key-file") || strings.Contains(err.Error(), "\n") {
						t.Errorf("read with the wrong key: %v", err)
					}
				}
			}
			b, _ := os.ReadFile(c.opts.S3SSECKeyFile)
			if _, err := other.Get(ctx, "big"); err != nil && strings.Contains(err.Error(), strings.TrimSpace(string(b))) {
				t.Error("an error shows the key file's content")
			}
		})
	}
}

func TestEndpointWithCredentialsRefused(t *testing.T) {
	for _, ep := range []string{"https://TOKEN@s3.example.com", "https://user:secret@s3.example.com", "s3.example.com", "://x"} {
		err := checkSecurity(store.Options{S3Endpoint: ep})
		if !errors.Is(err, store.ErrInvalid) || err != nil && (strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "TOKEN")) {
			t.Errorf("--s3-endpoint %q: %v; want ErrInvalid that does not repeat the credential", ep, err)
		}
	}
	if err := checkSecurity(store.Options{S3Endpoint: "http://127.0.0.1:9000"}); err != nil {
		t.Errorf("a plain endpoint refused: %v", err)
	}
}
