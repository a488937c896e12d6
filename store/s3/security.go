package s3

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/etcdguard/etcdguard/store"
)

// sseC is an SSE-C customer key as S3 wants it in headers. It lives only in the Store:
// never in Options, a flag value, a log line or an error.
type sseC struct {
	key, keyMD5 string // base64
}

// checkSecurity validates the encryption and Object Lock options, which S3 would only
// refuse at the first upload, hours later in a daemon.
func checkSecurity(opts store.Options) error {
	// A credential in the endpoint would be printed with every error and retry that
	// names the request's URL.
	if u, err := url.Parse(opts.S3Endpoint); opts.S3Endpoint != "" && (err != nil || u.User != nil || u.Host == "") {
		return store.Invalid(fmt.Errorf("--s3-endpoint %q is not a plain http(s)://HOST[:PORT] URL: give credentials through AWS_ACCESS_KEY_ID or AWS_PROFILE, never in the URL", store.Redact(opts.S3Endpoint)))
	}
	switch opts.S3SSE {
	case "", "AES256", "aws:kms", "aws:kms:dsse":
	default:
		return store.Invalid(fmt.Errorf("unknown --s3-sse %q: use AES256 or aws:kms", opts.S3SSE))
	}
	if opts.S3KMSKeyID != "" && !strings.HasPrefix(opts.S3SSE, "aws:kms") {
		return store.Invalid(errors.New("--s3-kms-key-id needs --s3-sse aws:kms"))
	}
	if opts.S3SSECKeyFile != "" && opts.S3SSE != "" {
		return store.Invalid(fmt.Errorf("--s3-sse-c-key-file and --s3-sse %s exclude each other: an object has one kind of server-side encryption", opts.S3SSE))
	}
	switch {
	case opts.S3ObjectLockMode != "" && opts.S3ObjectLockRetain <= 0:
		return store.Invalid(fmt.Errorf("--s3-object-lock-mode %s needs --s3-object-lock-retain (e.g. 7d): how long each object stays locked", opts.S3ObjectLockMode))
	case opts.S3ObjectLockMode == "" && opts.S3ObjectLockRetain != 0:
		return store.Invalid(errors.New("--s3-object-lock-retain needs --s3-object-lock-mode GOVERNANCE or COMPLIANCE"))
	}
	switch opts.S3ObjectLockMode {
	case "", string(types.ObjectLockModeGovernance), string(types.ObjectLockModeCompliance):
	default:
		return store.Invalid(fmt.Errorf("unknown --s3-object-lock-mode %q: use GOVERNANCE or COMPLIANCE", opts.S3ObjectLockMode))
	}
	if opts.S3SSECKeyFile != "" {
		if _, err := loadSSECKey(opts.S3SSECKeyFile); err != nil {
			return err
		}
	}
	return nil
}

// loadSSECKey reads a 32-byte AES-256 key, raw or base64, from path. Errors name the file,
// never its content.
func loadSSECKey(path string) (*sseC, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, store.Invalid(fmt.Errorf("--s3-sse-c-key-file: %w", err))
	}
	key := b
	if len(b) != 32 {
		dec, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(dec) != 32 {
			return nil, store.Invalid(fmt.Errorf("--s3-sse-c-key-file %s: want a 32-byte AES-256 key, raw or base64 (e.g. head -c 32 /dev/urandom > %s), got %d bytes", path, path, len(b)))
		}
		key = dec
	}
	sum := md5.Sum(key)
	return &sseC{key: base64.StdEncoding.EncodeToString(key), keyMD5: base64.StdEncoding.EncodeToString(sum[:])}, nil
}

// customerKey returns the SSE-C headers' values, all nil without a key.
func (s *Store) customerKey() (algo, key, keyMD5 *string) {
	if s.ssec == nil {
		return nil, nil, nil
	}
	return aws.String("AES256"), aws.String(s.ssec.key), aws.String(s.ssec.keyMD5)
}

// lock returns the Object Lock retention of an object written now, if one is configured.
func (s *Store) lock() (types.ObjectLockMode, *time.Time) {
	if s.opts.S3ObjectLockMode == "" {
		return "", nil
	}
	// Whole seconds: S3 keeps retention dates to the second and some servers refuse more.
	until := time.Now().Add(s.opts.S3ObjectLockRetain).UTC().Truncate(time.Second).Add(time.Second)
	return types.ObjectLockMode(s.opts.S3ObjectLockMode), &until
}

// checkObjectLock makes sure the bucket can take the retention we are about to send: a
// bucket created without Object Lock refuses every such Put.
func (s *Store) checkObjectLock(ctx context.Context) error {
	if s.opts.S3ObjectLockMode == "" {
		return nil
	}
	var out *s3.GetObjectLockConfigurationOutput
	err := s.send(ctx, "check Object Lock on "+s.bucket, false, nil, func(ctx context.Context, _ io.Reader) (err error) {
		out, err = s.client.GetObjectLockConfiguration(ctx, &s3.GetObjectLockConfigurationInput{Bucket: &s.bucket})
		return err
	})
	code, status := errInfo(err)
	switch {
	case err == nil && out.ObjectLockConfiguration != nil && out.ObjectLockConfiguration.ObjectLockEnabled == types.ObjectLockEnabledEnabled:
		return nil
	case err == nil || code == "ObjectLockConfigurationNotFoundError" || status == 404:
		return store.Invalid(fmt.Errorf("bucket %q has no Object Lock, which --s3-object-lock-mode needs: enable it with `aws s3api put-bucket-versioning --bucket %s --versioning-configuration Status=Enabled` and `aws s3api put-object-lock-configuration --bucket %s --object-lock-configuration ObjectLockEnabled=Enabled`, or drop --s3-object-lock-mode",
			s.bucket, s.bucket, s.bucket))
	case status == 403 || code == "AccessDenied":
		// A role may lack s3:GetBucketObjectLockConfiguration; the first Put will tell.
		slog.WarnContext(ctx, "cannot check that the bucket has Object Lock (s3:GetBucketObjectLockConfiguration denied); a bucket without it refuses every upload", "bucket", s.bucket)
		return nil
	}
	return fmt.Errorf("checking Object Lock on bucket %q at %s: %w", s.bucket, s.endpoint(), err)
}

// lockErr reports whether err is S3 refusing to remove or overwrite a locked object
// version. S3 says AccessDenied (or InvalidRequest), which without the message would read
// as missing permissions.
func lockErr(err error) bool {
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode() {
	case "AccessDenied", "InvalidRequest", "ObjectLocked":
	default:
		return false
	}
	msg := strings.ToLower(apiErr.ErrorMessage())
	for _, w := range []string{"object lock", "worm", "retention", "locked", "protected"} {
		if strings.Contains(msg, w) {
			return true
		}
	}
	return false
}

// sseCErr explains the refusals S3 gives when an SSE-C object is read without its key or
// with another one. Without a key GET says why in its body and HEAD, which has none,
// answers a bare 400; another key gets a plain 403.
func (s *Store) sseCErr(err error) error {
	code, status := errInfo(err)
	var apiErr smithy.APIError
	msg := ""
	if errors.As(err, &apiErr) {
		msg = strings.ToLower(apiErr.ErrorMessage())
	}
	encMsg := strings.Contains(msg, "encrypt") || strings.Contains(msg, "sse-c") || strings.Contains(msg, "customer")
	bare := code == "BadRequest" || code == "Forbidden" // HEAD: a status, no body
	switch {
	case s.ssec == nil && status == 400 && (encMsg || bare):
		return fmt.Errorf("%w: the object is encrypted with a customer key (SSE-C): set --s3-sse-c-key-file to the key it was written with", store.ErrEncryptionKey)
	case s.ssec != nil && (status == 400 || status == 403) && encMsg:
		return fmt.Errorf("%w: the object was written with another SSE-C key than the one in --s3-sse-c-key-file", store.ErrEncryptionKey)
	case s.ssec != nil && status == 403:
		// MinIO and S3 answer a wrong key with a plain AccessDenied, like a policy would.
		return fmt.Errorf("%w (%w): the object was written with another SSE-C key than the one in --s3-sse-c-key-file, or the credentials' IAM policy does not allow reading it", store.ErrEncryptionKey, store.ErrAccessDenied)
	}
	return nil
}
