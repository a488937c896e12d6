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
	if err := store.FenceErr(ctx); err != nil {
		return 0, s.objectErr("put", key, err)
	}
	if _, err := s.client.PutObject(ctx, in); err != nil {
		return 0, s.objectErr("put", key, err)
	}
	return int64(len(b)), nil
}

func (s *Store) putMultipart(ctx context.Context, key, k string, r io.Reader, first []byte) (total int64, err error) {
	in := &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &k}
	in.ServerSideEncryption, in.SSEKMSKeyId, in.StorageClass = s.objectSettings()
	// S3 refuses part checksums that the upload was not created with, and the
	// SDK sends CRC32s unless told "when_required" (for servers that lack them).
	var algo types.ChecksumAlgorithm
	if s.client.Options().RequestChecksumCalculation != aws.RequestChecksumCalculationWhenRequired {
		algo = types.ChecksumAlgorithmCrc32
		in.ChecksumAlgorithm = algo
	}
	created, err := s.client.CreateMultipartUpload(ctx, in)
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
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
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
				Body: bytes.NewReader(buf), ContentLength: aws.Int64(int64(len(buf))), ChecksumAlgorithm: algo}
			out, err := s.client.UploadPart(uctx, in)
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
			fail(sourceErr(uctx, rerr))
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
	if err := store.FenceErr(ctx); err != nil {
		return 0, s.objectErr("put", key, err)
	}
	_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &s.bucket, Key: &k, UploadId: uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return 0, s.objectErr("put", key, fmt.Errorf("complete multipart upload: %w", err))
	}
	return total, nil
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
// bring the upload back); so the upload is looked up again after each abort.
func (s *Store) abortUpload(ctx context.Context, k string, uploadID *string) error {
	for attempt := 0; ; attempt++ {
		_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &k, UploadId: uploadID})
		if err != nil && !isNoSuchUpload(err) {
			return err
		}
		if attempt == 4 {
			return nil // AbortIncomplete in the next save catches whatever is still left
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
		}
		out, err := s.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &k})
		if isNoSuchUpload(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(out.Uploads, func(u types.MultipartUpload) bool { return aws.ToString(u.UploadId) == aws.ToString(uploadID) }) {
			return nil
		}
	}
}
