// Package s3 is the store backend for S3 and S3-compatible servers
// (s3://BUCKET[/PREFIX]), built on aws-sdk-go-v2's service/s3.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"

	"github.com/etcdguard/etcdguard/store"
)

func init() {
	store.Register("s3", func(u *url.URL) (string, error) {
		bucket, prefix, err := ParseURL(u)
		if err != nil {
			return "", err
		}
		return (&Store{bucket: bucket, prefix: cleanPrefix(prefix)}).String(), nil
	}, func(ctx context.Context, u *url.URL, opts store.Options) (store.Store, error) {
		bucket, prefix, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		return Open(ctx, bucket, prefix, opts)
	})
}

// ParseURL reads s3://BUCKET[/PREFIX] into the bucket and the prefix (without the slashes
// around it). Its errors wrap store.ErrInvalid.
func ParseURL(u *url.URL) (bucket, prefix string, err error) {
	if u.User != nil {
		return "", "", store.Invalid(fmt.Errorf("--store %q contains credentials: remove them and use the AWS default chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, instance role)", store.Redact(u.String())))
	}
	if u.Host == "" || u.Opaque != "" {
		return "", "", store.Invalid(fmt.Errorf("malformed --store %q: want s3://BUCKET[/PREFIX]", u.String()))
	}
	// S3's own rules are stricter (3 to 63 of a-z, 0-9, '.' and '-'), but legacy buckets
	// and other servers take more; what is refused here is what no bucket name holds, and
	// what would not read back from the store's URL (a port, an escape).
	if len(u.Host) > 255 || strings.IndexFunc(u.Host, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) >= 0 {
		return "", "", store.Invalid(fmt.Errorf("malformed --store %q: %q is not a bucket name (letters, digits, '.', '-' and '_'; no port: the endpoint is --s3-endpoint)", u.String(), u.Host))
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" && (store.CheckKey(prefix) != nil || !utf8.ValidString(prefix)) {
		return "", "", store.Invalid(fmt.Errorf("malformed --store %q: the prefix %q must be a UTF-8 slash-separated path without empty, '.' or '..' elements", u.String(), prefix))
	}
	return u.Host, prefix, nil
}

const (
	// DefaultPartSize keeps 10,000 parts above 156 GiB, far beyond any etcd database.
	DefaultPartSize = 16 << 20
	// MinPartSize is S3's lower limit for every part but the last.
	MinPartSize = 5 << 20
	// DefaultConcurrency is how many parts upload at once by default.
	DefaultConcurrency = 2
	// maxParts is S3's limit on parts per multipart upload.
	maxParts = 10000
	// abortTimeout bounds the cleanup that runs after the caller's ctx is gone: short
	// enough that a daemon aborting against a hung server still exits within a 30s
	// SIGTERM grace period; AbortIncomplete catches what is left.
	abortTimeout = 10 * time.Second
)

// Store is a bucket, or the part of one under a prefix.
type Store struct {
	client      *s3.Client
	bucket      string
	prefix      string // "" or ends with "/"
	opts        store.Options
	partSize    int64
	concurrency int
	maxParts    int               // S3's limit; tests lower it
	retry       store.RetryPolicy // of each request within a Put
	ssec        *sseC
	initErr     error // a setting NewFromClient could not apply; every request returns it
}

var _ store.Store = (*Store)(nil)

// Open connects to bucket with credentials from the AWS default chain and checks
// that the bucket exists and the credentials may use it, so a wrong setting
// fails now with advice rather than hours later in the first scheduled backup.
func Open(ctx context.Context, bucket, prefix string, opts store.Options) (*Store, error) {
	return open(ctx, bucket, prefix, opts)
}

// open takes extra config options so tests can inject static credentials
// instead of changing the process environment.
func open(ctx context.Context, bucket, prefix string, opts store.Options, loadOpts ...func(*config.LoadOptions) error) (*Store, error) {
	if opts.PartSize != 0 && opts.PartSize < MinPartSize {
		return nil, store.Invalid(fmt.Errorf("S3 part size %d is too small: S3 requires at least %d bytes (5 MiB)", opts.PartSize, MinPartSize))
	}
	if err := checkSecurity(opts); err != nil {
		return nil, err
	}
	files, missing, err := credentialFiles()
	if err != nil {
		return nil, err
	}
	var absent string
	if len(missing) > 0 {
		absent = " (" + strings.Join(missing, " and ") + " does not exist)"
	}
	// The SDK's own warnings (an IMDS fallback off EC2, retries) go to slog at debug
	// level: the error we return already says what matters, on one line.
	sdkLog := logging.LoggerFunc(func(_ logging.Classification, format string, v ...any) {
		slog.Debug(fmt.Sprintf(format, v...), "component", "aws-sdk")
	})
	cfg, err := config.LoadDefaultConfig(ctx, append([]func(*config.LoadOptions) error{config.WithLogger(sdkLog)}, loadOpts...)...)
	if err != nil {
		// Not ErrInvalid: a profile or ca_bundle file may be provisioned after the daemon starts.
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	// The SDK would report missing credentials as a failed HeadBucket.
	if cfg.Credentials != nil {
		creds, err := cfg.Credentials.Retrieve(ctx)
		if err != nil {
			return nil, fmt.Errorf("no AWS credentials for bucket %q%s: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the node an IAM role: %w", bucket, absent, err)
		}
		slog.Debug("AWS credentials", "bucket", bucket, "source", creds.Source)
		// A named file without credentials for the profile makes the SDK go on down its
		// chain to the node's instance role: backups would run as another identity, or
		// fail as access denied, far from the cause.
		if creds.Source == ec2rolecreds.ProviderName {
			// A credentials file is there to hold keys; a config file alone (ca_bundle,
			// region) goes well with an instance role.
			if keys := slices.IndexFunc(files, func(f string) bool { return strings.HasPrefix(f, "AWS_SHARED_CREDENTIALS_FILE=") }); keys >= 0 {
				return nil, fmt.Errorf("%s has no credentials for AWS profile %q (the SDK fell back to the instance role): add [%s] with aws_access_key_id and aws_secret_access_key, or set AWS_PROFILE",
					files[keys], profile(), profile())
			}
			if absent != "" {
				slog.Warn("using the node's instance role for the store"+absent, "bucket", bucket)
			}
		}
	}
	if opts.S3Region != "" {
		cfg.Region = opts.S3Region
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		// BaseEndpoint already holds AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL if set;
		// the flag wins over both.
		if opts.S3Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.S3Endpoint)
		}
		o.UsePathStyle = opts.S3PathStyle
		// Many S3-compatible servers return no checksums; the SDK would log a
		// warning for every object read from them.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	return New(ctx, client, bucket, prefix, opts)
}

// New wraps client after checking the options, the bucket, and that the bucket has Object
// Lock when the options ask for retention.
func New(ctx context.Context, client *s3.Client, bucket, prefix string, opts store.Options) (*Store, error) {
	if err := checkSecurity(opts); err != nil {
		return nil, err
	}
	s := NewFromClient(client, bucket, prefix, opts)
	if s.initErr != nil {
		return nil, s.initErr
	}
	err := s.send(ctx, "check bucket "+bucket, false, nil, func(ctx context.Context, _ io.Reader) error {
		_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(bucket)})
		return err
	})
	if err != nil {
		return nil, s.bucketErr(err)
	}
	if err := s.checkObjectLock(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// credentialFiles sorts the AWS files the environment names into those there and those
// missing. The SDK skips a missing one as if it were not named and goes on down its chain
// (to the node's instance role), which is right where a role is meant (deploy/credentials.md
// makes the file optional) and a surprise where the file was: open says which happened.
func credentialFiles() (present, missing []string, err error) {
	for _, env := range []string{"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"} {
		path := os.Getenv(env)
		if path == "" {
			continue
		}
		f, err := os.Open(path)
		switch {
		case err == nil:
			f.Close()
			present = append(present, env+"="+path)
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, env+"="+path)
		default: // there but unreadable (its mode, the container's user): never skip it
			return nil, nil, fmt.Errorf("%s: %w: make it readable by etcdguard's user, or unset %s", env, err, env)
		}
	}
	return present, missing, nil
}

func profile() string {
	if p := os.Getenv("AWS_PROFILE"); p != "" {
		return p
	}
	return "default"
}

// NewFromClient wraps an existing client without checking the bucket or the options (New
// does). A part size below MinPartSize is raised to it.
func NewFromClient(client *s3.Client, bucket, prefix string, opts store.Options) *Store {
	prefix = cleanPrefix(prefix)
	// Retries are store.Wrap's (and, within a Put, this backend's own, for each part):
	// the SDK's would multiply with them, and its retry quota runs dry under a long
	// spell of SlowDown, failing requests it never tried.
	client = s3.New(client.Options(), func(o *s3.Options) { o.Retryer = aws.NopRetryer{} })
	s := &Store{client: client, bucket: bucket, prefix: prefix, opts: opts,
		partSize: opts.PartSize, concurrency: opts.Concurrency, maxParts: maxParts, retry: store.DefaultRetry}
	if s.partSize == 0 {
		s.partSize = DefaultPartSize
	}
	s.partSize = max(s.partSize, MinPartSize)
	if s.concurrency <= 0 {
		s.concurrency = DefaultConcurrency
	}
	if opts.S3SSECKeyFile != "" {
		s.ssec, s.initErr = loadSSECKey(opts.S3SSECKeyFile)
	}
	return s
}

// cleanPrefix is "" or the prefix without slashes around it and one after it.
func cleanPrefix(prefix string) string {
	if prefix = strings.Trim(prefix, "/"); prefix != "" {
		prefix += "/"
	}
	return prefix
}

// String returns s3://BUCKET[/PREFIX], escaped so that it reads back as the same store.
func (s *Store) String() string {
	u := url.URL{Scheme: "s3", Host: s.bucket}
	if s.prefix != "" {
		u.Path = "/" + strings.TrimSuffix(s.prefix, "/")
	}
	return u.String()
}

func (s *Store) endpoint() string {
	if ep := s.client.Options().BaseEndpoint; ep != nil {
		return store.Redact(*ep)
	}
	return "AWS S3 in region " + s.client.Options().Region
}

// bucketErr explains why the bucket cannot be used, and what to do about it.
func (s *Store) bucketErr(err error) error {
	b := strconv.Quote(s.bucket)
	switch code, status := errInfo(err); {
	case code == "NoSuchBucket" || status == 404:
		return fmt.Errorf("bucket %s at %s: %w: create it with: aws s3 mb s3://%s", b, s.endpoint(), store.ErrBucketNotExist, s.bucket)
	case status == 403 || code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
		detail := "" // InvalidAccessKeyId and SignatureDoesNotMatch say which half is wrong
		if code != "" && code != "Forbidden" && code != "AccessDenied" {
			detail = " (" + code + ")"
		}
		return fmt.Errorf("bucket %s at %s: %w%s: check the AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, instance role) and that their IAM policy allows s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload on it",
			b, s.endpoint(), store.ErrAccessDenied, detail)
	case status == 301 || code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed":
		return fmt.Errorf("bucket %s is not in region %s: set --s3-region to the bucket's region: %w", b, s.client.Options().Region, err)
	}
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot connect to S3 endpoint %s (connection refused): check --s3-endpoint and that the server is running: %w", s.endpoint(), err)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("cannot resolve S3 endpoint %s: check --s3-endpoint / --s3-region: %w", s.endpoint(), err)
	}
	return fmt.Errorf("check bucket %s at %s: %w", b, s.endpoint(), err)
}

// errInfo returns the S3 error code and HTTP status of err, if it has them.
func errInfo(err error) (code string, status int) {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code = apiErr.ErrorCode()
	}
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) {
		status = respErr.HTTPStatusCode()
	}
	return code, status
}

// objectErr wraps err from an operation on key, so errors.Is finds the
// store's sentinels.
func (s *Store) objectErr(op, key string, err error) error {
	code, status := errInfo(err)
	transient := isTransient(err)
	// Only reads meet an object's SSE-C key: a 403 on a put or delete is the policy's
	// (or a retention lock's), never a wrong key.
	if op == "get" || op == "stat" {
		if herr := s.sseCErr(err); herr != nil {
			return fmt.Errorf("%s %s/%s: %w", op, s, key, herr)
		}
	}
	switch {
	case lockErr(err):
		err = fmt.Errorf("%w: S3 Object Lock keeps it until its retention date (%w)", store.ErrLocked, err)
	case code == "NoSuchKey" || code == "NotFound" || (status == 404 && code != "NoSuchBucket"):
		err = store.ErrNotExist // the SDK's request ids would only be noise here
	case code == "NoSuchBucket":
		err = fmt.Errorf("%w: create it with: aws s3 mb s3://%s (%w)", store.ErrBucketNotExist, s.bucket, err)
	case status == 403:
		err = fmt.Errorf("%w: check the credentials and their IAM policy (%w)", store.ErrAccessDenied, err)
	}
	err = fmt.Errorf("%s %s/%s: %w", op, s, key, err)
	if transient {
		return store.Transient(err)
	}
	return err
}

// sdkRetryables is how the SDK's own retryer tells a passing failure (5xx, SlowDown and
// other throttling codes, a reset or refused connection, a timeout) from a final one.
var sdkRetryables = retry.IsErrorRetryables(retry.DefaultRetryables)

// isTransient reports whether a request that failed with err may succeed if sent again.
// A response cut short (unexpected EOF) is one too: the SDK only sees it as a failed
// deserialization.
func isTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return sdkRetryables.IsErrorRetryable(err) == aws.TrueTernary || errors.Is(err, io.ErrUnexpectedEOF)
}

func (s *Store) key(key string) (string, error) {
	if s.initErr != nil {
		return "", s.initErr
	}
	if err := store.CheckKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

// Get opens key for reading.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	in := &s3.GetObjectInput{Bucket: &s.bucket, Key: &k}
	in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = s.customerKey()
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		return nil, s.objectErr("get", key, err)
	}
	return newBody(ctx, out), nil
}

// GetRange opens key from byte off on, if it is still the version etag names
// (store.Ranger: how a read cut short resumes).
func (s *Store) GetRange(ctx context.Context, key string, off int64, etag string) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	in := &s3.GetObjectInput{Bucket: &s.bucket, Key: &k, Range: aws.String(fmt.Sprintf("bytes=%d-", off)), IfMatch: &etag}
	in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = s.customerKey()
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		if code, status := errInfo(err); code == "PreconditionFailed" || status == 412 {
			return nil, fmt.Errorf("get %s/%s from byte %d: the object was replaced while it was being read: %w", s, key, off, err)
		}
		return nil, s.objectErr("get", key, err)
	}
	b := newBody(ctx, out)
	b.size = off + b.size // the whole object's, as the first Get said
	return b, nil
}

// body is a GetObject response body that says which version it reads (store.Versioned),
// and marks a failed read as transient: past the headers, any failure is the network's.
type body struct {
	io.ReadCloser
	ctx  context.Context
	etag string
	size int64
}

func newBody(ctx context.Context, out *s3.GetObjectOutput) *body {
	size := int64(-1)
	if out.ContentLength != nil {
		size = *out.ContentLength
	}
	return &body{ReadCloser: out.Body, ctx: ctx, etag: aws.ToString(out.ETag), size: size}
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.ctx.Err() == nil {
		err = store.Transient(err)
	}
	return n, err
}

func (b *body) Version() (string, int64) { return b.etag, b.size }

// Stat describes key.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return store.ObjectInfo{}, err
	}
	in := &s3.HeadObjectInput{Bucket: &s.bucket, Key: &k}
	in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = s.customerKey()
	out, err := s.client.HeadObject(ctx, in)
	if err != nil {
		return store.ObjectInfo{}, s.objectErr("stat", key, err)
	}
	// S3 leaves the retention out unless the caller may read it (s3:GetObjectRetention).
	return store.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified),
		RetainUntil: aws.ToTime(out.ObjectLockRetainUntilDate)}, nil
}

// List returns the objects whose keys start with prefix, sorted by key.
func (s *Store) List(ctx context.Context, prefix string) ([]store.ObjectInfo, error) {
	return s.ListAfter(ctx, prefix, "", 0)
}

// ListAfter lists like List, from after on (S3's StartAfter), at most limit objects.
func (s *Store) ListAfter(ctx context.Context, prefix, after string, limit int) ([]store.ObjectInfo, error) {
	if err := store.CheckPrefix(prefix); err != nil {
		return nil, err
	}
	in := &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: aws.String(s.prefix + prefix)}
	if after != "" {
		in.StartAfter = aws.String(s.prefix + after)
	}
	var out []store.ObjectInfo
	p := s3.NewListObjectsV2Paginator(s.client, in)
	for p.HasMorePages() && (limit <= 0 || len(out) < limit) {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s.objectErr("list", prefix, err)
		}
		for _, o := range page.Contents {
			key := strings.TrimPrefix(aws.ToString(o.Key), s.prefix)
			if strings.HasSuffix(key, "/") || key <= after { // folder markers made by consoles
				continue
			}
			out = append(out, store.ObjectInfo{Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)})
		}
	}
	// S3 sorts by UTF-8 bytes already; some compatible servers do not.
	slices.SortFunc(out, func(a, b store.ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Delete removes key; a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil {
		if err = s.objectErr("delete", key, err); errors.Is(err, store.ErrNotExist) {
			return nil // S3 itself says 204; some compatible servers say 404
		}
		return err
	}
	return nil
}

// AbortIncomplete aborts the multipart uploads under prefix that were started
// more than olderThan ago; their parts are billed until someone does.
func (s *Store) AbortIncomplete(ctx context.Context, prefix string, olderThan time.Duration) (int, error) {
	uploads, err := s.incomplete(ctx, prefix)
	if err != nil {
		return 0, err
	}
	cutoff := time.Now().Add(-olderThan)
	n := 0
	for _, u := range uploads {
		if !aws.ToTime(u.Initiated).Before(cutoff) {
			continue
		}
		// Started long ago is not enough: a big snapshot on a slow link uploads for hours.
		// Only an upload that has sent no part for olderThan is a leftover.
		last, err := s.lastPart(ctx, u)
		if err != nil {
			return n, err
		}
		if !last.Before(cutoff) {
			continue
		}
		_, err = s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
		if err != nil && !isNoSuchUpload(err) {
			return n, s.objectErr("abort upload of", strings.TrimPrefix(aws.ToString(u.Key), s.prefix), err)
		}
		n++
	}
	return n, nil
}

// lastPart is when the upload last received a part (its start if none).
func (s *Store) lastPart(ctx context.Context, u types.MultipartUpload) (time.Time, error) {
	last := aws.ToTime(u.Initiated)
	p := s3.NewListPartsPaginator(s.client, &s3.ListPartsInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if isNoSuchUpload(err) {
			return last, nil // completed or aborted meanwhile: aborting again is harmless
		}
		if err != nil {
			return last, s.objectErr("list the parts of the upload of", strings.TrimPrefix(aws.ToString(u.Key), s.prefix), err)
		}
		for _, part := range page.Parts {
			if t := aws.ToTime(part.LastModified); t.After(last) {
				last = t
			}
		}
	}
	return last, nil
}

// incomplete lists the multipart uploads in progress under prefix.
func (s *Store) incomplete(ctx context.Context, prefix string) ([]types.MultipartUpload, error) {
	if err := store.CheckPrefix(prefix); err != nil {
		return nil, err
	}
	// The whole bucket's uploads, filtered here: MinIO lists multipart uploads only for an
	// empty prefix or an exact key, so a prefix would find none there. Uploads in progress
	// are few, even in a shared bucket.
	var out []types.MultipartUpload
	p := s3.NewListMultipartUploadsPaginator(s.client, &s3.ListMultipartUploadsInput{Bucket: &s.bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if isNoSuchUpload(err) {
			// gofakes3 answers this for a bucket that never had an upload.
			break
		}
		if err != nil {
			return nil, s.objectErr("list multipart uploads under", prefix, err)
		}
		for _, u := range page.Uploads {
			if strings.HasPrefix(aws.ToString(u.Key), s.prefix+prefix) {
				out = append(out, u)
			}
		}
	}
	return out, nil
}

func isNoSuchUpload(err error) bool {
	code, _ := errInfo(err)
	return code == "NoSuchUpload"
}
