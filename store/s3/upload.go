package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/etcdguard/etcdguard/store"
)

// Put streams r to key. A stream that fits in one part is sent with a single
// PutObject; a longer one with a multipart upload of up to s.concurrency parts
// in flight, holding about (concurrency+1) × part size in memory. On any
// error or cancellation the multipart upload is aborted, so nothing is left
// behind and nothing appears under key.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	k, err := s.key(key)
	if err != nil {
		return 0, err
	}
	first, err := readFirst(ctx, r, int(s.partSize))
	if err == io.EOF {
		return s.putSingle(ctx, key, k, first)
	}
	if err != nil {
		return 0, fmt.Errorf("put %s/%s: %w", s, key, sourceErr(ctx, err))
	}
	// The first part is full. Peek one byte, so that an object of exactly one
	// part size is still a plain PutObject.
	var one [1]byte
	m, err := readPart(ctx, r, one[:])
	switch {
	case err == io.EOF && m == 0:
		return s.putSingle(ctx, key, k, first)
	case err == io.EOF:
		r = bytes.NewReader(one[:m])
	case err != nil:
		return 0, fmt.Errorf("put %s/%s: %w", s, key, sourceErr(ctx, err))
	default:
		r = io.MultiReader(bytes.NewReader(one[:m]), r)
	}
	return s.putMultipart(ctx, key, k, r, first)
}

// objectSettings are the --s3-sse, --s3-kms-key-id and --s3-storage-class of new objects;
// empty values leave the bucket's defaults.
func (s *Store) objectSettings() (types.ServerSideEncryption, *string, types.StorageClass) {
	var kms *string
	if s.opts.S3KMSKeyID != "" {
		kms = &s.opts.S3KMSKeyID
	}
	return types.ServerSideEncryption(s.opts.S3SSE), kms, types.StorageClass(s.opts.S3StorageClass)
}

func (s *Store) putSingle(ctx context.Context, key, k string, b []byte) (int64, error) {
	in := &s3.PutObjectInput{Bucket: &s.bucket, Key: &k, Body: bytes.NewReader(b), ContentLength: aws.Int64(int64(len(b)))}
	in.ServerSideEncryption, in.SSEKMSKeyId, in.StorageClass = s.objectSettings()
	in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = s.customerKey()
	if in.ObjectLockMode, in.ObjectLockRetainUntilDate = s.lock(); in.ObjectLockMode != "" {
		// S3 refuses a Put with retention that carries neither Content-MD5 nor a checksum,
		// and the SDK sends none when told "when_required".
		in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
	}
	err := s.send(ctx, "put "+key, true, b, func(ctx context.Context, body io.Reader) error {
		in.Body = body
		_, err := s.client.PutObject(ctx, in)
		return err
	})
	if err != nil {
		return 0, s.objectErr("put", key, err)
	}
	return int64(len(b)), nil
}

func (s *Store) putMultipart(ctx context.Context, key, k string, r io.Reader, first []byte) (total int64, err error) {
	in := &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &k}
	in.ServerSideEncryption, in.SSEKMSKeyId, in.StorageClass = s.objectSettings()
	in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = s.customerKey()
	in.ObjectLockMode, in.ObjectLockRetainUntilDate = s.lock()
	// S3 refuses part checksums that the upload was not created with, and the
	// SDK sends CRC32s unless told "when_required" (for servers that lack them).
	// Parts of a locked object need a checksum (or Content-MD5) whatever the setting.
	var algo types.ChecksumAlgorithm
	if s.client.Options().RequestChecksumCalculation != aws.RequestChecksumCalculationWhenRequired || in.ObjectLockMode != "" {
		algo = types.ChecksumAlgorithmCrc32
		in.ChecksumAlgorithm = algo
	}
	// A create answered with an error after it was done leaves an upload no one knows of:
	// the next save's AbortIncomplete removes it.
	var created *s3.CreateMultipartUploadOutput
	err = s.send(ctx, "create the upload of "+key, true, nil, func(ctx context.Context, _ io.Reader) (err error) {
		created, err = s.client.CreateMultipartUpload(ctx, in)
		return err
	})
	if err != nil {
		return 0, s.objectErr("put", key, err)
	}
	uploadID := created.UploadId
	defer func() {
		if err == nil {
			return
		}
		// ctx may be why we are here: the abort gets a context of its own.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		if aerr := s.abortUpload(actx, k, uploadID); aerr != nil {
			err = fmt.Errorf("%w (aborting the multipart upload also failed, the next save will retry: %v)", err, aerr)
		}
	}()

	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		parts    []types.CompletedPart
		firstErr error
	)
	setErr := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	fail := func(err error) {
		setErr(err)
		cancel() // stop the other parts and the reader
	}
	// Parts in flight are limited by sem, buffers by pool: concurrency parts
	// upload while the next one is read.
	sem := make(chan struct{}, s.concurrency)
	pool := newBufPool(s.concurrency+1, int(s.partSize))
	pool.left-- // first is one of them
	upload := func(num int32, buf []byte) bool {
		select {
		case sem <- struct{}{}:
		case <-uctx.Done():
			pool.put(buf[:cap(buf)])
			return false
		}
		wg.Go(func() {
			defer pool.put(buf[:cap(buf)])
			defer func() { <-sem }()
			in := &s3.UploadPartInput{Bucket: &s.bucket, Key: &k, UploadId: uploadID, PartNumber: aws.Int32(num),
				ContentLength: aws.Int64(int64(len(buf))), ChecksumAlgorithm: algo}
			in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = s.customerKey()
			var out *s3.UploadPartOutput
			err := s.send(uctx, fmt.Sprintf("upload part %d of %s", num, key), true, buf, func(ctx context.Context, body io.Reader) (err error) {
				in.Body = body
				out, err = s.client.UploadPart(ctx, in)
				return err
			})
			if err != nil {
				fail(fmt.Errorf("upload part %d: %w", num, err))
				return
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(num), ETag: out.ETag, ChecksumCRC32: out.ChecksumCRC32})
			mu.Unlock()
		})
		return true
	}
	buf, n, rerr := first, len(first), error(nil)
	for num := int32(1); ; num++ {
		if n == 0 {
			pool.put(buf)
			break
		}
		if int(num) > s.maxParts {
			pool.put(buf)
			fail(fmt.Errorf("the stream is longer than S3's limit of %d parts of %d bytes: raise the part size", s.maxParts, s.partSize))
			break
		}
		if !upload(num, buf[:n]) {
			break
		}
		total += int64(n)
		if rerr != nil { // io.EOF: that was the last part
			break
		}
		var gerr error
		if buf, gerr = pool.get(uctx); gerr != nil {
			break // firstErr or ctx.Err() says why
		}
		if n, rerr = readPart(uctx, r, buf); rerr != nil && rerr != io.EOF {
			pool.put(buf)
			// The parts in flight are not cancelled but waited for: a part cancelled
			// on our side may still land on the server after the abort and bring the
			// upload back (versitygw does), leaving it behind until the next save.
			setErr(sourceErr(uctx, rerr))
			break
		}
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return 0, s.objectErr("put", key, firstErr)
	}

	slices.SortFunc(parts, func(a, b types.CompletedPart) int { return int(*a.PartNumber - *b.PartNumber) })
	cin := &s3.CompleteMultipartUploadInput{Bucket: &s.bucket, Key: &k, UploadId: uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}}
	cin.SSECustomerAlgorithm, cin.SSECustomerKey, cin.SSECustomerKeyMD5 = s.customerKey()
	attempts := 0
	err = s.send(ctx, "complete the upload of "+key, true, nil, func(ctx context.Context, _ io.Reader) error {
		attempts++
		_, err := s.client.CompleteMultipartUpload(ctx, cin)
		if err != nil && attempts > 1 && isNoSuchUpload(err) && s.completed(ctx, key, total) {
			return nil // an earlier attempt completed it; only its answer was lost
		}
		return err
	})
	if err != nil {
		return 0, s.objectErr("put", key, fmt.Errorf("complete multipart upload: %w", err))
	}
	return total, nil
}

// send sends one request of a Put (with body b, if any), and again while it fails
// transiently: a stream cannot be read twice, so it is each request (each part) that is
// retried, not the Put. An attempt during which the SDK has read none of b, or waited for
// the answer, for opts.StallTimeout is abandoned as stalled, and retried.
func (s *Store) send(ctx context.Context, what string, write bool, b []byte, fn func(context.Context, io.Reader) error) error {
	d := s.opts.StallTimeout
	return store.Retry(ctx, s.retry, what, func(ctx context.Context) error {
		if write {
			// Before each attempt, not only the first: a daemon stopped during a backoff
			// may wake up no longer the leader.
			if err := store.FenceErr(ctx); err != nil {
				return err
			}
		}
		actx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		var body io.Reader
		if b != nil {
			body = bytes.NewReader(b)
		}
		if d > 0 {
			w := time.AfterFunc(d, func() { cancel(store.ErrStalled) })
			defer w.Stop()
			if b != nil {
				body = &progressReader{ctx: ctx, r: bytes.NewReader(b), t: w, d: d}
			}
		}
		err := fn(actx, body)
		if d > 0 {
			store.Progress(ctx) // an answer, even an error, is the store moving
		}
		if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), store.ErrStalled) {
			return fmt.Errorf("%w: %s moved nothing for %s", store.ErrStalled, what, d)
		}
		if isTransient(err) {
			return store.Transient(err)
		}
		return err
	})
}

// progressReader pushes its timer, and the Put's deadline (store.Progress), back each time
// the request reads from it. The SDK may
// seek it back to the start (to sign or checksum it): it is a ReadSeeker so it can.
type progressReader struct {
	ctx context.Context
	r   *bytes.Reader
	t   *time.Timer
	d   time.Duration
}

func (p *progressReader) Read(b []byte) (int, error) {
	p.t.Reset(p.d)
	store.Progress(p.ctx)
	return p.r.Read(b)
}

func (p *progressReader) Seek(off int64, whence int) (int64, error) { return p.r.Seek(off, whence) }

// completed reports whether key holds an object of size bytes: after a completion that
// failed in a way that may have been done, and whose retry finds no upload. Anything else
// (an upload aborted under us, the key holding something else) stays an error.
func (s *Store) completed(ctx context.Context, key string, size int64) bool {
	info, err := s.Stat(ctx, key)
	return err == nil && info.Size == size
}

// readFirst reads the first part. Small objects (manifests, plans, audit events) only
// cost a small buffer; once the stream outgrows it, a whole part buffer is allocated once,
// so a large stream leaves no trail of growing buffers for the GC. It returns io.EOF if
// the stream ended.
func readFirst(ctx context.Context, r io.Reader, size int) ([]byte, error) {
	small := make([]byte, min(64<<10, size))
	n, err := readPart(ctx, r, small)
	if err != nil || n == size {
		return small[:n], err
	}
	buf := make([]byte, size)
	copy(buf, small)
	m, err := readPart(ctx, r, buf[n:])
	return buf[:n+m], err
}

// readPart fills buf from r, checking ctx between reads because r (an etcd
// snapshot stream) may not watch ctx itself. It returns io.EOF, with the bytes
// read so far, when the stream ended, and nil when buf is full.
func readPart(ctx context.Context, r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// bufPool hands out at most `left` part buffers, allocating them only when
// needed, and blocks for a returned one after that: this is what bounds memory.
type bufPool struct {
	free chan []byte
	size int
	left int // only the reading goroutine calls get
}

func newBufPool(n, size int) *bufPool {
	return &bufPool{free: make(chan []byte, n), size: size, left: n}
}

func (p *bufPool) get(ctx context.Context) ([]byte, error) {
	select {
	case b := <-p.free:
		return b, nil
	default:
	}
	if p.left > 0 {
		p.left--
		return make([]byte, p.size), nil
	}
	select {
	case b := <-p.free:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *bufPool) put(b []byte) { p.free <- b }

// sourceErr says whether the caller cancelled or the stream being stored failed.
func sourceErr(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return err
	}
	return fmt.Errorf("read source: %w", err)
}

// abortUpload aborts a multipart upload until it is gone. A part whose request was
// cancelled on our side may still be landing on the server, and S3 documents that an
// abort may then have to be repeated to free everything (servers such as versitygw even
// bring the upload back, or fail the abort with a 500 while the part lands); so a
// transient failure is tried again, and the upload is looked up again after each abort.
//
// Gone means not listed twice in a row: a part landing late brings it back in between.
func (s *Store) abortUpload(ctx context.Context, k string, uploadID *string) error {
	gone := 0
	for attempt := 0; ; attempt++ {
		if gone == 0 {
			_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &k, UploadId: uploadID})
			if err != nil && !isNoSuchUpload(err) && (!isTransient(err) || attempt == 6) {
				return err
			}
		}
		if attempt == 6 {
			return nil // AbortIncomplete in the next save catches whatever is still left
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
		}
		out, err := s.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &k})
		switch {
		case isNoSuchUpload(err) || (err == nil && !slices.ContainsFunc(out.Uploads, func(u types.MultipartUpload) bool {
			return aws.ToString(u.UploadId) == aws.ToString(uploadID)
		})):
			if gone++; gone == 2 {
				return nil
			}
		case err != nil && !isTransient(err):
			return err
		default:
			gone = 0
		}
	}
}
