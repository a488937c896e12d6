package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/storetest"
)

// testStore lets the suite list multipart uploads with the raw client, so a
// leak is seen even if the store's own AbortIncomplete were wrong.
type testStore struct {
	*Store
}

func (s testStore) OpenUploads(ctx context.Context) ([]string, error) {
	return openUploads(ctx, s.client, s.bucket, s.prefix)
}

func openUploads(ctx context.Context, c *s3.Client, bucket, prefix string) ([]string, error) {
	out, err := c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket, Prefix: &prefix})
	if isNoSuchUpload(err) { // gofakes3, before the bucket's first upload
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys, nil
}

func randomPrefix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "t-" + hex.EncodeToString(b) + "/etcdguard"
}

// servers are the S3 implementations every test here runs against.
var servers = []struct {
	name  string
	start func(testing.TB) *testharness.S3Server
}{
	{"gofakes3", testharness.StartFakeS3},
	{"versitygw", testharness.StartVersityGW},
	{"minio", testharness.StartMinIO},
}

func forEachServer(t *testing.T, fn func(t *testing.T, srv *testharness.S3Server)) {
	for _, sv := range servers {
		t.Run(sv.name, func(t *testing.T) {
			t.Parallel()
			fn(t, sv.start(t))
		})
	}
}

func newTestStore(t *testing.T, srv *testharness.S3Server, opts store.Options) *Store {
	opts.PartSize = storetest.PartSize
	return NewFromClient(srv.Client(t), srv.Bucket, randomPrefix(), opts)
}

func TestSuite(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testharness.S3Server) {
		storetest.Run(t, path.Base(t.Name()), func(t *testing.T) store.Store {
			return testStore{newTestStore(t, srv, store.Options{})}
		})
	})
}

// staticCreds keeps Open away from the process environment, which parallel
// tests must not change.
func staticCreds(srv *testharness.S3Server, secret string) func(*config.LoadOptions) error {
	return config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(srv.AccessKey, secret, ""))
}

func TestOpen(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testharness.S3Server) {
		ctx := t.Context()
		s, err := open(ctx, srv.Bucket, "/backups/prod/", srv.Options(), staticCreds(srv, srv.SecretKey))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if got, want := s.String(), "s3://"+srv.Bucket+"/backups/prod"; got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
		if err := store.PutBytes(ctx, s, "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		raw := srv.Client(t)
		if _, err := raw.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: aws.String("backups/prod/k")}); err != nil {
			t.Errorf("object not stored under the prefix: %v", err)
		}

		_, err = open(ctx, "no-such-bucket", "", srv.Options(), staticCreds(srv, srv.SecretKey))
		if !errors.Is(err, store.ErrBucketNotExist) || !strings.Contains(err.Error(), "aws s3 mb s3://no-such-bucket") {
			t.Errorf("open of a missing bucket = %v, want ErrBucketNotExist with a hint", err)
		}
	})
}

// gofakes3 checks no signatures, so only the real server can refuse a key.
func TestOpenWrongSecret(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	wrong := "wrong-secret-" + srv.SecretKey
	_, err := open(t.Context(), srv.Bucket, "", srv.Options(), staticCreds(srv, wrong))
	if !errors.Is(err, store.ErrAccessDenied) || !strings.Contains(err.Error(), "IAM policy") {
		t.Errorf("open with a wrong secret = %v, want ErrAccessDenied with a hint", err)
	}
	if err != nil && strings.Contains(err.Error(), wrong) {
		t.Errorf("the error shows the secret: %v", err)
	}
}

func TestOpenConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close()
	opts := store.Options{S3Endpoint: endpoint, S3PathStyle: true}
	creds := config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("k", "s", ""))
	_, err = open(t.Context(), "b", "", opts, creds, config.WithRetryMaxAttempts(1))
	if err == nil || !strings.Contains(err.Error(), "cannot connect to S3 endpoint "+endpoint) {
		t.Errorf("open with nothing listening = %v, want an error naming %s", err, endpoint)
	}
}

func TestOpenWithoutCredentials(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	none := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{}, errors.New("no EC2 IMDS role found")
	})
	_, err := open(t.Context(), srv.Bucket, "", srv.Options(), config.WithCredentialsProvider(none))
	if err == nil || !strings.Contains(err.Error(), "no AWS credentials for bucket") {
		t.Errorf("open without credentials = %v, want an error saying how to provide them", err)
	}
}

func TestOpenValidatesOptions(t *testing.T) {
	for _, opts := range []store.Options{
		{PartSize: 1 << 20},
		{S3SSE: "rot13"},
		{S3KMSKeyID: "alias/x"},
	} {
		if _, err := open(t.Context(), "b", "", opts); err == nil {
			t.Errorf("open(%+v) succeeded, want an error", opts)
		}
	}
}

// TestOpenURL goes through store.Open and the AWS default chain, as the CLI
// does, with the endpoint from AWS_ENDPOINT_URL_S3 rather than a flag. It
// changes the environment, so it must not run in parallel.
func TestOpenURL(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	s, err := store.Open(t.Context(), srv.URL("x/y"), store.Options{S3PathStyle: true})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	if got, want := s.String(), srv.URL("x/y"); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if err := store.PutBytes(t.Context(), s, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Open(t.Context(), "s3://user:secret@bucket/p", store.Options{}); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("store.Open with credentials in the URL = %v, want a refusal that does not repeat them", err)
	}
}

func TestAbortIncomplete(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testharness.S3Server) {
		ctx := t.Context()
		s := newTestStore(t, srv, store.Options{})
		raw := srv.Client(t)
		for _, key := range []string{s.prefix + "c/snapshots/a.db.zst", "elsewhere/b"} {
			if _, err := raw.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &srv.Bucket, Key: aws.String(key)}); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := s.AbortIncomplete(ctx, "", time.Hour); err != nil || n != 0 {
			t.Errorf("AbortIncomplete(1h) = %d, %v; want 0: the upload is new", n, err)
		}
		if n, err := s.AbortIncomplete(ctx, "other/", 0); err != nil || n != 0 {
			t.Errorf("AbortIncomplete(other/) = %d, %v; want 0", n, err)
		}
		if n, err := s.AbortIncomplete(ctx, "c/", 0); err != nil || n != 1 {
			t.Errorf("AbortIncomplete(c/) = %d, %v; want 1", n, err)
		}
		if open, err := openUploads(ctx, raw, srv.Bucket, ""); err != nil || len(open) != 1 || open[0] != "elsewhere/b" {
			t.Errorf("uploads left = %q, %v; want only the one outside the store's prefix", open, err)
		}
	})
}

// An upload that started long ago but is still sending parts is someone's live upload (an
// 8 GiB snapshot on a slow link takes hours): clean-up leaves it; once it has been idle
// that long, it is a leftover and is aborted.
func TestAbortIncompleteSparesLiveUploads(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testharness.S3Server) {
		ctx := t.Context()
		s := newTestStore(t, srv, store.Options{})
		raw := srv.Client(t)
		key := aws.String(s.prefix + "c/snapshots/live.db.zst")
		up, err := raw.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &srv.Bucket, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		const age = 2 * time.Second
		time.Sleep(age + 200*time.Millisecond) // started "long" ago...
		part := bytes.Repeat([]byte("x"), 5<<20)
		if _, err := raw.UploadPart(ctx, &s3.UploadPartInput{Bucket: &srv.Bucket, Key: key, UploadId: up.UploadId, PartNumber: aws.Int32(1), Body: bytes.NewReader(part)}); err != nil {
			t.Fatal(err)
		}
		// ...but a part arrived just now.
		if n, err := s.AbortIncomplete(ctx, "c/", age); err != nil || n != 0 {
			t.Fatalf("AbortIncomplete = %d, %v; want 0: the upload is live", n, err)
		}
		time.Sleep(age + 200*time.Millisecond)
		if n, err := s.AbortIncomplete(ctx, "c/", age); err != nil || n != 1 {
			t.Fatalf("AbortIncomplete = %d, %v; want 1: the upload has been idle for %s", n, err, age)
		}
	})
}

func TestTooManyParts(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	s := newTestStore(t, srv, store.Options{})
	s.maxParts = 2
	_, err := s.Put(t.Context(), "big", io.LimitReader(zeros{}, 2*storetest.PartSize+1))
	if err == nil || !strings.Contains(err.Error(), "raise the part size") {
		t.Fatalf("Put beyond the part limit = %v, want an error saying to raise the part size", err)
	}
	if open, err := openUploads(t.Context(), s.client, s.bucket, s.prefix); err != nil || len(open) != 0 {
		t.Errorf("uploads left = %q, %v", open, err)
	}
	if _, err := s.Stat(t.Context(), "big"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Stat = %v, want ErrNotExist", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// recorder sits in front of gofakes3 to see the requests the store makes, and
// to fail one part the way S3 would.
type recorder struct {
	next     http.Handler
	failPart string // partNumber whose upload is refused

	mu          sync.Mutex
	inFlight    int
	maxInFlight int
	headers     map[string]http.Header // by operation
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	op := r.Method + " bucket"
	if strings.Count(strings.Trim(r.URL.Path, "/"), "/") > 0 {
		op = r.Method + " object"
	}
	switch {
	case q.Has("uploads"):
		op = "CreateMultipartUpload"
	case q.Has("partNumber"):
		op = "UploadPart"
	case r.Method == http.MethodPost && q.Has("uploadId"):
		op = "CompleteMultipartUpload"
	}
	rc.mu.Lock()
	if rc.headers[op] == nil {
		rc.headers[op] = r.Header.Clone()
	}
	rc.mu.Unlock()
	if op == "UploadPart" {
		rc.mu.Lock()
		rc.inFlight++
		rc.maxInFlight = max(rc.maxInFlight, rc.inFlight)
		rc.mu.Unlock()
		defer func() { rc.mu.Lock(); rc.inFlight--; rc.mu.Unlock() }()
		time.Sleep(20 * time.Millisecond) // let parts overlap
		if q.Get("partNumber") == rc.failPart {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>`)
			return
		}
	}
	rc.next.ServeHTTP(w, r)
}

func startRecorder(t *testing.T, failPart string) (*recorder, *testharness.S3Server) {
	rc := &recorder{next: gofakes3.New(s3mem.New()).Server(), failPart: failPart, headers: map[string]http.Header{}}
	ts := httptest.NewServer(rc)
	t.Cleanup(ts.Close)
	srv := &testharness.S3Server{Endpoint: ts.URL, Bucket: "recorded", AccessKey: "k", SecretKey: "s", Region: "us-east-1"}
	if _, err := srv.Client(t).CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: &srv.Bucket}); err != nil {
		t.Fatal(err)
	}
	return rc, srv
}

func TestPartFailureAbortsUpload(t *testing.T) {
	_, srv := startRecorder(t, "3")
	s := newTestStore(t, srv, store.Options{})
	_, err := s.Put(t.Context(), "k", io.LimitReader(zeros{}, 6*storetest.PartSize))
	if !errors.Is(err, store.ErrAccessDenied) || !strings.Contains(err.Error(), "upload part 3") {
		t.Errorf("Put with a refused part = %v, want ErrAccessDenied naming part 3", err)
	}
	if open, err := openUploads(t.Context(), s.client, s.bucket, s.prefix); err != nil || len(open) != 0 {
		t.Errorf("uploads left = %q, %v", open, err)
	}
	if _, err := s.Stat(t.Context(), "k"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Stat = %v, want ErrNotExist", err)
	}
}

func TestConcurrencyAndOptions(t *testing.T) {
	rc, srv := startRecorder(t, "")
	s := newTestStore(t, srv, store.Options{Concurrency: 3, S3SSE: "aws:kms", S3KMSKeyID: "alias/etcd", S3StorageClass: "STANDARD_IA"})
	ctx := t.Context()
	if _, err := s.Put(ctx, "big", io.LimitReader(zeros{}, 8*storetest.PartSize)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "small", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.maxInFlight != 3 {
		t.Errorf("at most %d parts were in flight, want 3", rc.maxInFlight)
	}
	for _, op := range []string{"CreateMultipartUpload", "PUT object"} {
		h := rc.headers[op]
		if h.Get("X-Amz-Server-Side-Encryption") != "aws:kms" ||
			h.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id") != "alias/etcd" ||
			h.Get("X-Amz-Storage-Class") != "STANDARD_IA" {
			t.Errorf("%s headers lack SSE, KMS key or storage class: %v", op, h)
		}
	}
	if h := rc.headers["UploadPart"]; h.Get("X-Amz-Server-Side-Encryption") != "" {
		t.Errorf("UploadPart sends SSE headers, which S3 refuses: %v", h)
	}
}

// fakeIMDS serves EC2's instance metadata (IMDSv2) on loopback with a role whose keys are
// the fake S3's: what the SDK's default chain reaches last, on a node with an instance role.
func fakeIMDS(t *testing.T, srv *testharness.S3Server) string {
	t.Helper()
	creds := fmt.Sprintf(`{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":%q,"SecretAccessKey":%q,"Token":"t","Expiration":%q,"LastUpdated":%q}`,
		srv.AccessKey, srv.SecretKey, time.Now().Add(6*time.Hour).UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case r.Method == http.MethodPut && p == "/latest/api/token":
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
			io.WriteString(w, "token")
		case strings.HasSuffix(p, "/iam/security-credentials/") || strings.HasSuffix(p, "/iam/security-credentials-extended/"):
			io.WriteString(w, "node-role")
		case strings.HasSuffix(p, "/node-role"):
			io.WriteString(w, creds)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(ts.Close)
	return ts.URL
}

// On a node with an instance role, a credentials file that lacks the profile must not let
// the SDK fall back to the role (backups would run as the node, or fail as access denied
// far from the cause): Open refuses, naming the file and the profile. Without such a
// file the role is what the operator chose, and Open uses it. It changes the
// environment, so it must not run in parallel.
func TestOpenInstanceRoleFallback(t *testing.T) {
	srv := testharness.StartFakeS3(t)
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_REGION", srv.Region)
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fakeIMDS(t, srv))
	opts := store.Options{S3Endpoint: srv.Endpoint, S3PathStyle: true}

	s, err := Open(t.Context(), srv.Bucket, "", opts)
	if err != nil {
		t.Fatalf("open with the instance role and no credentials file: %v", err)
	}
	if err := store.PutBytes(t.Context(), s, "k", []byte("v")); err != nil {
		t.Fatalf("put with the instance role's keys: %v", err)
	}

	file := filepath.Join(dir, "credentials")
	if err := os.WriteFile(file, []byte("[minio]\naws_access_key_id = a\naws_secret_access_key = b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
	_, err = Open(t.Context(), srv.Bucket, "", opts)
	if err == nil || !strings.Contains(err.Error(), file+` has no credentials for AWS profile "default"`) || !strings.Contains(err.Error(), "instance role") {
		t.Fatalf("open with a credentials file lacking the profile = %v, want a refusal naming %s and the profile", err, file)
	}
}
