package testharness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/etcdguard/etcdguard/store"
)

// S3Server is an S3 endpoint started for one test, with a bucket created.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	Bucket    string
	AccessKey string
	SecretKey string
	Region    string
	// CACert is the PEM file that verifies the server's certificate when it serves HTTPS.
	CACert string
	// KMSKey is the name of the server's built-in KMS key (SSE-S3, and SSE-KMS with it).
	KMSKey string

	objectLock bool
}

// MinIOOptions start MinIO with more of what S3 offers than StartMinIO does.
type MinIOOptions struct {
	// ObjectLock creates the bucket with Object Lock enabled (and so versioning).
	ObjectLock bool
	// KMS gives MinIO a built-in KMS key (MINIO_KMS_SECRET_KEY), named in S3Server.KMSKey,
	// which SSE-S3 and SSE-KMS need.
	KMS bool
	// TLS serves HTTPS with a certificate for 127.0.0.1 from a throwaway CA (S3Server.CACert):
	// MinIO refuses SSE-C over plain HTTP.
	TLS bool
}

// Options returns the store options that reach this server. Credentials are
// not among them: use Client, or Env for a subprocess.
func (s *S3Server) Options() store.Options {
	return store.Options{S3Endpoint: s.Endpoint, S3Region: s.Region, S3PathStyle: true}
}

// URL returns the --store URL for prefix in this server's bucket.
func (s *S3Server) URL(prefix string) string {
	if prefix == "" {
		return "s3://" + s.Bucket
	}
	return "s3://" + s.Bucket + "/" + prefix
}

// Env returns the environment a subprocess (the etcdguard binary) needs to
// reach this server. Append it to os.Environ() or use it alone.
func (s *S3Server) Env() []string {
	env := []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + s.Region,
		"AWS_ENDPOINT_URL_S3=" + s.Endpoint,
		// Without this the SDK probes the EC2 metadata service when another
		// credential source is missing, which hangs for seconds off EC2.
		"AWS_EC2_METADATA_DISABLED=true",
		"ETCDGUARD_S3_ENDPOINT=" + s.Endpoint,
		"ETCDGUARD_S3_REGION=" + s.Region,
		"ETCDGUARD_S3_PATH_STYLE=true",
	}
	if s.CACert != "" {
		env = append(env, "AWS_CA_BUNDLE="+s.CACert)
	}
	return env
}

// Client returns an S3 client for this server with static credentials; it reads
// no environment or AWS config files, so parallel tests cannot disturb it.
func (s *S3Server) Client(t testing.TB) *s3.Client {
	t.Helper()
	o := s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		DisableLogOutputChecksumValidationSkipped: true,
	}
	if s.CACert != "" {
		pem, err := os.ReadFile(s.CACert)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		o.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		})
	}
	return s3.New(o)
}

func (s *S3Server) createBucket(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in := &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)}
	if s.objectLock {
		in.ObjectLockEnabledForBucket = aws.Bool(true)
	}
	if _, err := s.Client(t).CreateBucket(ctx, in); err != nil {
		t.Fatalf("create bucket %s at %s: %v", s.Bucket, s.Endpoint, err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// StartFakeS3 serves gofakes3 (in memory, in process) on a loopback port until
// the test ends. It checks no signatures, so any credentials work.
func StartFakeS3(t testing.TB) *S3Server {
	t.Helper()
	faker := gofakes3.New(s3mem.New())
	ts := httptest.NewServer(faker.Server()) // binds 127.0.0.1
	t.Cleanup(ts.Close)
	s := &S3Server{Endpoint: ts.URL, Bucket: "etcdguard-test", AccessKey: "fake", SecretKey: "fake", Region: "us-east-1"}
	s.createBucket(t)
	return s
}

// StartVersityGW runs a real S3 server, versitygw with its posix backend on a
// temp dir, until the test ends. It skips the test when bin/versitygw has not
// been built, unless ETCDGUARD_E2E=1 asks for every real-server test to run.
func StartVersityGW(t testing.TB) *S3Server {
	t.Helper()
	s := &S3Server{Bucket: "etcdguard-test", AccessKey: "etcdguard-" + randomHex(4), SecretKey: randomHex(16), Region: "us-east-1"}
	root := t.TempDir()
	// Keys go in the environment, not flags, so they never show in process listings.
	s.start(t, "versitygw", func(addr string) []string {
		return []string{"--region", s.Region, "--port", addr, "--quiet", "posix", root}
	}, []string{"HOME=" + root, "ROOT_ACCESS_KEY_ID=" + s.AccessKey, "ROOT_SECRET_ACCESS_KEY=" + s.SecretKey})
	return s
}

// StartMinIO runs a real MinIO server on a temp dir until the test ends; it skips like
// StartVersityGW when bin/minio has not been built.
func StartMinIO(t testing.TB) *S3Server {
	t.Helper()
	return StartMinIOWith(t, MinIOOptions{})
}

// StartMinIOWith runs MinIO like StartMinIO, with Object Lock, a KMS key or TLS.
func StartMinIOWith(t testing.TB, o MinIOOptions) *S3Server {
	t.Helper()
	s := &S3Server{Bucket: "etcdguard-test", AccessKey: "etcdguard-" + randomHex(4), SecretKey: randomHex(16), Region: "us-east-1",
		objectLock: o.ObjectLock}
	root := t.TempDir()
	data := filepath.Join(root, "data")
	env := []string{"HOME=" + root, "MINIO_ROOT_USER=" + s.AccessKey, "MINIO_ROOT_PASSWORD=" + s.SecretKey,
		"MINIO_REGION=" + s.Region, "MINIO_BROWSER=off", "MINIO_UPDATE=off"}
	if o.KMS {
		s.KMSKey = "etcdguard-key"
		key := make([]byte, 32)
		rand.Read(key)
		env = append(env, "MINIO_KMS_SECRET_KEY="+s.KMSKey+":"+base64.StdEncoding.EncodeToString(key))
	}
	extra := []string{}
	if o.TLS {
		f := GenerateTLS(t)
		certs := filepath.Join(root, "certs")
		if err := os.MkdirAll(certs, 0o700); err != nil {
			t.Fatal(err)
		}
		for src, dst := range map[string]string{f.ServerCert: "public.crt", f.ServerKey: "private.key"} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(certs, dst), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s.CACert = f.CACert
		extra = append(extra, "--certs-dir", certs)
	}
	s.start(t, "minio", func(addr string) []string {
		return append(append([]string{"server", "--quiet", "--address", addr, "--console-address", "127.0.0.1:0"}, extra...), data)
	}, env)
	return s
}

// start runs bin/NAME with args(addr) and only env (stray variables of ours cannot
// change it) until it answers S3 requests, retrying on a fresh port if it exits early
// (another process took the port between pick and bind), then creates the bucket.
func (s *S3Server) start(t testing.TB, name string, args func(addr string) []string, env []string) {
	t.Helper()
	if os.Getenv("ETCDGUARD_E2E") != "1" {
		if _, err := os.Stat(filepath.Join(RepoRoot(t), "bin", name)); err != nil {
			t.Skipf("bin/%s not built: run `make tools` to test against a real S3 server", name)
		}
	}
	bin := Bin(t, name)
	var err error
	for range 3 {
		if err = s.startOnce(t, name, bin, args, env); err == nil {
			s.createBucket(t)
			return
		}
	}
	t.Fatalf("start %s: %v", name, err)
}

func (s *S3Server) startOnce(t testing.TB, name, bin string, args func(addr string) []string, env []string) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()

	var out syncBuffer
	cmd := exec.Command(bin, args(addr)...)
	cmd.SysProcAttr = killWithParent()
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}

	s.Endpoint = "http://" + addr
	if s.CACert != "" {
		s.Endpoint = "https://" + addr
	}
	client := s.Client(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			exited <- werr // for stop
			stop()
			return fmt.Errorf("%s exited (%v): %s", name, werr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("%s did not answer on %s within 30s: %w\n%s", name, addr, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return nil
}

// syncBuffer collects a child's output, which may be read while the child
// still writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// OpenUploads lists the keys of the bucket's multipart uploads that are still open: what
// an interrupted upload would leave behind.
func (s *S3Server) OpenUploads(t testing.TB) []string {
	t.Helper()
	out, err := s.Client(t).ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(s.Bucket)})
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchUpload" {
		return nil // gofakes3's answer before a bucket's first upload
	}
	if err != nil {
		t.Fatalf("listing multipart uploads: %v", err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys
}
