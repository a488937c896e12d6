package testharness

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"math"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// noRetry makes the SDK give the first answer back, so a test sees the fault itself.
func noRetry(o *s3.Options) { o.Retryer = aws.NopRetryer{} }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestClassifyS3(t *testing.T) {
	q := func(s string) url.Values { v, _ := url.ParseQuery(s); return v }
	for _, c := range []struct {
		method, path, query string
		want                S3Op
	}{
		{"GET", "/b/k/x.db", "", OpGetObject},
		{"GET", "/b/k", "partNumber=1", OpGetObject},
		{"HEAD", "/b/k", "", OpHeadObject},
		{"PUT", "/b/k", "", OpPutObject},
		{"POST", "/b/k", "uploads=", OpCreateMultipartUpload},
		{"PUT", "/b/k", "partNumber=2&uploadId=u", OpUploadPart},
		{"POST", "/b/k", "uploadId=u", OpCompleteMultipartUpload},
		{"DELETE", "/b/k", "uploadId=u", OpAbortMultipartUpload},
		{"GET", "/b/k", "uploadId=u", OpListParts},
		{"GET", "/b", "list-type=2&prefix=p", OpListObjects},
		{"GET", "/b/", "", OpListObjects},
		{"GET", "/b", "uploads=", OpListMultipartUploads},
		{"DELETE", "/b/k", "", OpDeleteObject},
		{"POST", "/b", "delete=", OpDeleteObjects},
		{"PUT", "/b", "", OpOther},
		{"GET", "/", "", OpOther},
		{"PUT", "/b/k", "tagging=", OpOther},
		{"GET", "/b", "object-lock=", OpOther},
	} {
		if got := ClassifyS3(c.method, c.path, q(c.query)); got != c.want {
			t.Errorf("%s %s?%s: %s, want %s", c.method, c.path, c.query, got, c.want)
		}
	}
}

// multipartRoundTrip uploads three parts through s, reads the object back and checks it.
func multipartRoundTrip(t *testing.T, s *S3Server, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := s.Client(t)
	parts := [][]byte{randomBytes(5 << 20), randomBytes(5 << 20), randomBytes(1 << 20)}
	up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.Bucket, Key: &key}, noRetry)
	if err != nil {
		t.Fatal(err)
	}
	var done []types.CompletedPart
	for i, p := range parts {
		n := int32(i + 1)
		out, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &s.Bucket, Key: &key, UploadId: up.UploadId,
			PartNumber: &n, Body: bytes.NewReader(p)}, noRetry)
		if err != nil {
			t.Fatalf("part %d: %v", n, err)
		}
		done = append(done, types.CompletedPart{PartNumber: &n, ETag: out.ETag})
	}
	if _, err := c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &s.Bucket, Key: &key,
		UploadId: up.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: done}}, noRetry); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.Bucket, Key: &key}, noRetry)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(got.Body)
	got.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, bytes.Join(parts, nil)) {
		t.Fatalf("read back %d bytes, not the %d uploaded", len(b), len(bytes.Join(parts, nil)))
	}
}

// With no rules the proxy is transparent, SigV4 included: a multipart upload of three
// parts, a listing, a head and a delete work through it against real servers, and
// each request is classified as the operation it is.
func TestFaultProxyTransparent(t *testing.T) {
	for name, start := range map[string]func(testing.TB) *S3Server{"versitygw": StartVersityGW, "minio": StartMinIO} {
		t.Run(name, func(t *testing.T) {
			p := StartS3FaultProxy(t, start(t), FaultSeed(t))
			p.Set()
			s := p.Server()
			multipartRoundTrip(t, s, "dir/a b+c.db") // a key that needs escaping
			ctx := context.Background()
			c := s.Client(t)
			list, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &s.Bucket, Prefix: aws.String("dir/")}, noRetry)
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Contents) != 1 || aws.ToString(list.Contents[0].Key) != "dir/a b+c.db" {
				t.Fatalf("listing: %v", list.Contents)
			}
			head, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.Bucket, Key: aws.String("dir/a b+c.db")}, noRetry)
			if err != nil {
				t.Fatal(err)
			}
			if aws.ToInt64(head.ContentLength) != 11<<20 {
				t.Fatalf("head: length %d", aws.ToInt64(head.ContentLength))
			}
			if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.Bucket, Key: aws.String("dir/a b+c.db")}, noRetry); err != nil {
				t.Fatal(err)
			}
			if len(p.Injected()) != 0 {
				t.Fatalf("injected %v with no rules", p.Injected())
			}
			want := map[S3Op]int{OpCreateMultipartUpload: 1, OpUploadPart: 3, OpCompleteMultipartUpload: 1, OpGetObject: 1,
				OpListObjects: 1, OpHeadObject: 1, OpDeleteObject: 1}
			got := p.Ops()
			for op, n := range want {
				if got[op] != n {
					t.Errorf("%s: %d requests seen, want %d (all: %v)", op, got[op], n, got)
				}
			}
		})
	}
}

func apiError(t *testing.T, err error) (code string, status int) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want an S3 error, got %v", err)
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	return ae.ErrorCode(), status
}

// isConnBroken says err is a connection that broke, not an answer.
func isConnBroken(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.EPIPE)
}

// Each fault is what an AWS SDK client sees from a real S3 in trouble, before and after
// the server did the work.
func TestFaultProxyFaults(t *testing.T) {
	up := StartVersityGW(t)
	p := StartS3FaultProxy(t, up, FaultSeed(t))
	s := p.Server()
	c := s.Client(t)
	direct := up.Client(t)
	ctx := context.Background()
	body := randomBytes(1 << 20)
	put := func(key string) error {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.Bucket, Key: &key, Body: bytes.NewReader(body)}, noRetry)
		return err
	}
	exists := func(key string) bool {
		_, err := direct.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.Bucket, Key: &key})
		return err == nil
	}

	for _, tc := range []struct {
		fault  Fault
		code   string
		status int
	}{{Fault500, "InternalError", 500}, {FaultSlowDown, "SlowDown", 503}} {
		for _, ph := range []Phase{PhaseBefore, PhaseAfter} {
			t.Run(string(tc.fault)+"-"+ph.String(), func(t *testing.T) {
				key := "err-" + string(tc.fault) + "-" + ph.String()
				p.Set(FaultRule{Ops: []S3Op{OpPutObject}, Faults: []Fault{tc.fault}, Rate: 1, Phase: ph})
				err := put(key)
				if code, st := apiError(t, err); code != tc.code || st != tc.status {
					t.Fatalf("got %s %d, want %s %d (%v)", code, st, tc.code, tc.status, err)
				}
				if got, want := exists(key), ph == PhaseAfter; got != want {
					t.Fatalf("object stored: %v, want %v", got, want)
				}
				var ae smithy.APIError
				errors.As(err, &ae)
				if !strings.Contains(ae.ErrorMessage(), "Please") {
					t.Fatalf("message %q: not S3's", ae.ErrorMessage())
				}
			})
		}
	}

	for _, ph := range []Phase{PhaseBefore, PhaseAfter} {
		t.Run("reset-"+ph.String(), func(t *testing.T) {
			key := "reset-" + ph.String()
			p.Set(FaultRule{Ops: []S3Op{OpPutObject}, Faults: []Fault{FaultReset}, Rate: 1, Phase: ph})
			err := put(key)
			if err == nil || !isConnBroken(err) {
				t.Fatalf("want a broken connection, got %v", err)
			}
			if got, want := exists(key), ph == PhaseAfter; got != want {
				t.Fatalf("object stored: %v, want %v", got, want)
			}
		})
	}

	// The case a retry layer must get right: the upload is complete, the client is
	// told it failed. What a second complete gets depends on the server (logged):
	// versitygw completes again, AWS and MinIO may answer NoSuchUpload.
	t.Run("complete-500-after", func(t *testing.T) {
		for name, srv := range map[string]*S3Server{"versitygw": up, "minio": StartMinIO(t)} {
			t.Run(name, func(t *testing.T) {
				p := StartS3FaultProxy(t, srv, FaultSeed(t))
				s := p.Server()
				c := s.Client(t)
				key := "complete-after"
				up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.Bucket, Key: &key}, noRetry)
				if err != nil {
					t.Fatal(err)
				}
				n := int32(1)
				part, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &s.Bucket, Key: &key, UploadId: up.UploadId, PartNumber: &n,
					Body: bytes.NewReader(body)}, noRetry)
				if err != nil {
					t.Fatal(err)
				}
				complete := &s3.CompleteMultipartUploadInput{Bucket: &s.Bucket, Key: &key, UploadId: up.UploadId,
					MultipartUpload: &types.CompletedMultipartUpload{Parts: []types.CompletedPart{{PartNumber: &n, ETag: part.ETag}}}}
				p.Set(FaultRule{Ops: []S3Op{OpCompleteMultipartUpload}, Faults: []Fault{Fault500}, Nth: 1, Phase: PhaseAfter})
				_, err = c.CompleteMultipartUpload(ctx, complete, noRetry)
				if code, _ := apiError(t, err); code != "InternalError" {
					t.Fatalf("first complete: %v", err)
				}
				if _, err := srv.Client(t).HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.Bucket, Key: &key}); err != nil {
					t.Fatalf("the answered-500 complete did not complete the upload: %v", err)
				}
				_, err = c.CompleteMultipartUpload(ctx, complete, noRetry)
				t.Logf("%s: a second complete of a completed upload: %v", name, err)
				if err != nil {
					if code, _ := apiError(t, err); code != "NoSuchUpload" {
						t.Fatalf("second complete: %v, want success or NoSuchUpload", err)
					}
				}
			})
		}
	})

	p.Set()
	if err := put("obj"); err != nil {
		t.Fatal(err)
	}

	t.Run("truncate", func(t *testing.T) {
		p.Set(FaultRule{Ops: []S3Op{OpGetObject}, Faults: []Fault{FaultTruncate}, Rate: 1})
		out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.Bucket, Key: aws.String("obj")}, noRetry)
		if err != nil {
			t.Fatalf("the headers came whole: %v", err)
		}
		if aws.ToInt64(out.ContentLength) != int64(len(body)) {
			t.Fatalf("content length %d, want %d", aws.ToInt64(out.ContentLength), len(body))
		}
		b, err := io.ReadAll(out.Body)
		out.Body.Close()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("reading the body: %v after %d bytes, want unexpected EOF", err, len(b))
		}
		if len(b) != len(body)/2 {
			t.Fatalf("read %d bytes, want half of %d", len(b), len(body))
		}
		// A HEAD has no body to cut: the connection breaks instead.
		p.Set(FaultRule{Ops: []S3Op{OpHeadObject}, Faults: []Fault{FaultTruncate}, Rate: 1})
		if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.Bucket, Key: aws.String("obj")}, noRetry); !isConnBroken(err) {
			t.Fatalf("head: %v, want a broken connection", err)
		}
	})

	t.Run("latency", func(t *testing.T) {
		p.Set(FaultRule{Ops: []S3Op{OpHeadObject}, Faults: []Fault{FaultLatency}, Rate: 1, Latency: 400 * time.Millisecond})
		start := time.Now()
		if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.Bucket, Key: aws.String("obj")}, noRetry); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 400*time.Millisecond {
			t.Fatalf("answered in %v, before the added latency", d)
		}
	})

	t.Run("stall", func(t *testing.T) {
		for _, ph := range []Phase{PhaseBefore, PhaseAfter} {
			p.Set(FaultRule{Ops: []S3Op{OpPutObject}, Faults: []Fault{FaultStall}, Rate: 1, Phase: ph})
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			start := time.Now()
			_, err := c.PutObject(dctx, &s3.PutObjectInput{Bucket: &s.Bucket, Key: aws.String("stalled"), Body: bytes.NewReader(body)}, noRetry)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%s: %v, want the client's deadline", ph, err)
			}
			if d := time.Since(start); d < 900*time.Millisecond {
				t.Fatalf("%s: gave up after %v, before the deadline", ph, d)
			}
			// The proxy lets go of the request once the client has.
			waitFor(t, 5*time.Second, func() bool { return p.active.Load() == 0 })
		}
	})

	// A stall the client never gives up on ends when the proxy closes with its test.
	t.Run("stall-until-close", func(t *testing.T) {
		errc := make(chan error, 1)
		t.Run("proxy", func(t *testing.T) {
			p2 := StartS3FaultProxy(t, up, FaultSeed(t))
			p2.Set(FaultRule{Faults: []Fault{FaultStall}, Rate: 1})
			c2 := p2.Server().Client(t)
			go func() {
				_, err := c2.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: &s.Bucket, Key: aws.String("obj")}, noRetry)
				errc <- err
			}()
			waitFor(t, 5*time.Second, func() bool { return p2.active.Load() == 1 })
		})
		select {
		case err := <-errc:
			if err == nil {
				t.Fatal("a stalled request succeeded")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the stalled request still hangs after the proxy closed")
		}
	})

	got := p.Injected()
	for _, f := range AllFaults {
		if got[f] == 0 {
			t.Errorf("%s never injected: %v", f, got)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Nth injects once, on exactly that matching request; other operations do not count.
func TestFaultProxyNth(t *testing.T) {
	p := StartS3FaultProxy(t, StartVersityGW(t), FaultSeed(t))
	s := p.Server()
	c := s.Client(t)
	ctx := context.Background()
	p.Set(FaultRule{Ops: []S3Op{OpPutObject}, Faults: []Fault{FaultSlowDown}, Nth: 3})
	for i := 1; i <= 6; i++ {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.Bucket, Key: aws.String("k"), Body: strings.NewReader("v")}, noRetry)
		if (err != nil) != (i == 3) {
			t.Fatalf("put %d: %v", i, err)
		}
		// Other operations in between do not move the count.
		if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.Bucket, Key: aws.String("k")}, noRetry); err != nil && i != 3 {
			t.Fatalf("head %d: %v", i, err)
		}
	}
	if got := p.Injected(); got[FaultSlowDown] != 1 || len(got) != 1 {
		t.Fatalf("injected %v, want one SlowDown", got)
	}
	if in := p.Injections(); len(in) != 1 || in[0].Op != OpPutObject {
		t.Fatalf("injections %+v", in)
	}
}

// Rate injects on about that share of matching requests and on no other operation; the
// SDK sees exactly the faults counted.
func TestFaultProxyRate(t *testing.T) {
	p := StartS3FaultProxy(t, StartVersityGW(t), FaultSeed(t))
	s := p.Server()
	c := s.Client(t)
	ctx := context.Background()
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.Bucket, Key: aws.String("k"), Body: strings.NewReader("v")}); err != nil {
		t.Fatal(err)
	}
	const n, rate = 400, 0.3
	p.Set(FaultRule{Ops: []S3Op{OpHeadObject}, Faults: []Fault{Fault500, FaultSlowDown}, Rate: rate})
	failed := 0
	for range n {
		if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.Bucket, Key: aws.String("k")}, noRetry); err != nil {
			var re *awshttp.ResponseError
			if !errors.As(err, &re) || (re.HTTPStatusCode() != 500 && re.HTTPStatusCode() != 503) {
				t.Fatalf("head: %v", err)
			}
			failed++
		}
		if _, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &s.Bucket}, noRetry); err != nil {
			t.Fatalf("list (no rule for it): %v", err)
		}
	}
	got := p.Injected()
	if got[Fault500]+got[FaultSlowDown] != failed || len(got) > 2 {
		t.Fatalf("injected %v, the client saw %d failures", got, failed)
	}
	// Five standard deviations of the binomial: a correct proxy fails this once in
	// millions of runs.
	mean, sd := n*rate, math.Sqrt(n*rate*(1-rate))
	if math.Abs(float64(failed)-mean) > 5*sd {
		t.Fatalf("%d of %d failed, want about %.0f ± %.0f", failed, n, mean, 5*sd)
	}
	if got[Fault500] == 0 || got[FaultSlowDown] == 0 {
		t.Fatalf("faults not drawn from both kinds: %v", got)
	}
	t.Logf("%d of %d HEADs failed (%v)", failed, n, got)
}

// A TCP proxy in front of etcd, plain and TLS (the handshake passes through): a stall
// makes a request time out with the connection still open, resume heals it, a cut is
// survived by the client's reconnect.
func TestTCPProxyEtcd(t *testing.T) {
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) {
			cfg := clientv3.Config{DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
			var e *Etcd
			if scheme == "https" {
				f := GenerateTLS(t)
				e = StartEtcd(t, WithClientTLS(f))
				tc, err := (transport.TLSInfo{CertFile: f.ClientCert, KeyFile: f.ClientKey, TrustedCAFile: f.CACert}).ClientConfig()
				if err != nil {
					t.Fatal(err)
				}
				cfg.TLS = tc
			} else {
				e = StartEtcd(t)
			}
			p := StartTCPProxy(t, e.Endpoints[0])
			cfg.Endpoints = []string{p.Endpoint(scheme)}
			cli, err := clientv3.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cli.Close() })
			get := func(d time.Duration) error {
				ctx, cancel := context.WithTimeout(context.Background(), d)
				defer cancel()
				_, err := cli.Get(ctx, "/registry/a")
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := cli.Put(ctx, "/registry/a", "v"); err != nil {
				t.Fatal(err)
			}
			p.Stall()
			start := time.Now()
			err = get(time.Second)
			if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("get while stalled: %v, want DeadlineExceeded", err)
			}
			if d := time.Since(start); d < 900*time.Millisecond {
				t.Fatalf("get while stalled failed after %v, before its deadline", d)
			}
			if p.Conns() == 0 {
				t.Fatal("the stall closed the connection")
			}
			p.Resume()
			if err := get(5 * time.Second); err != nil {
				t.Fatalf("get after resume: %v", err)
			}
			p.Cut()
			if err := get(10 * time.Second); err != nil {
				t.Fatalf("get after cut: %v", err)
			}
			if p.cuts == 0 {
				t.Fatal("cut closed no connection")
			}
		})
	}
}
