package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/etcdclient"
	"github.com/etcdguard/etcdguard/internal/version"
	"github.com/etcdguard/etcdguard/store"
)

// SaveOptions configures Save.
type SaveOptions struct {
	Cluster     string // store namespace for this cluster (required)
	Endpoint    string // the member cli talks to; recorded in the manifest
	Compression string // zstd, gzip or none
	Level       string // fastest, default or better
	// StaleUploadAge: uploads of this cluster's snapshots that started longer ago than
	// this are aborted first (leftovers of a killed save). 0 skips the clean-up.
	StaleUploadAge time.Duration
	// History, if set, is called as the stream starts, with the revision etcd was at just
	// before; the function it returns names, after the stream and before the manifest is
	// written, the history the snapshot at rev belongs to, with a sample of the keys
	// written at rev (sampled from the start: a long upload may outlive rev in etcd).
	History func(ctx context.Context, startRev int64) HistoryFunc
	// Progress, if set, is called with the raw bytes received so far, from the streaming
	// goroutine; it must be cheap.
	Progress func(raw int64)
}

// HistoryFunc names the history a stored snapshot at rev belongs to, with a sample of the
// keys written at rev.
type HistoryFunc func(ctx context.Context, rev int64) (history string, tail []TailKey, err error)

// Save streams a snapshot of the member behind cli into st:
// etcd → sha256 and revision scan → compression → store, with no temporary file. The
// manifest is written only after etcd's trailer checked out and the object is stored.
func Save(ctx context.Context, cli *clientv3.Client, st store.Store, opts SaveOptions) (*Manifest, error) {
	if opts.Cluster == "" {
		return nil, errors.New("no cluster name: set --cluster")
	}
	if err := checkCompression(opts.Compression, opts.Level); err != nil {
		return nil, err
	}
	log := slog.With("cluster", opts.Cluster, "endpoint", opts.Endpoint)
	if opts.StaleUploadAge > 0 {
		n, err := st.AbortIncomplete(ctx, snapshotsPrefix(opts.Cluster), opts.StaleUploadAge)
		if err != nil {
			return nil, fmt.Errorf("cleaning up interrupted uploads in %s: %w", st, err)
		}
		if n > 0 {
			log.InfoContext(ctx, "aborted interrupted uploads", "count", n, "older_than", opts.StaleUploadAge)
		}
	}

	status, err := cli.Status(ctx, opts.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("etcd status of %s: %w", opts.Endpoint, err)
	}
	if err := etcdclient.SnapshotSource(opts.Endpoint, status); err != nil {
		return nil, err
	}
	var history HistoryFunc
	if opts.History != nil {
		hctx, stop := context.WithCancel(ctx)
		defer stop()
		history = opts.History(hctx, status.Header.Revision)
	}
	started := time.Now().UTC()
	m := &Manifest{
		ID:          newID(started),
		Cluster:     opts.Cluster,
		CreatedAt:   started,
		EtcdVersion: status.Version,
		ClusterID:   fmt.Sprintf("%x", status.Header.ClusterId),
		MemberID:    fmt.Sprintf("%x", status.Header.MemberId),
		Endpoint:    opts.Endpoint,
		Compression: opts.Compression,
		Encryption:  "none",
		ToolVersion: version.String(),
		RaftIndex:   status.RaftIndex,
	}
	m.Object = objectKey(m.Cluster, m.ID, m.Compression)

	// The stream gets its own cancel so a failed upload stops etcd from sending more.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := cli.SnapshotWithVersion(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting snapshot of %s: %w", opts.Endpoint, err)
	}
	defer resp.Snapshot.Close()
	if resp.Version != "" {
		m.EtcdVersion = resp.Version
	}
	log.InfoContext(ctx, "snapshot started", "id", m.ID, "object", m.Object)

	pr, pw := io.Pipe()
	type putResult struct {
		n   int64
		err error
	}
	uploaded := make(chan putResult, 1)
	go func() {
		n, err := st.Put(ctx, m.Object, pr)
		pr.CloseWithError(err) // unblocks the writer if the upload failed
		if err != nil {
			cancel()
		}
		uploaded <- putResult{n, err}
	}()

	d, streamErr := stream(resp.Snapshot, pw, opts)
	if streamErr != nil {
		pw.CloseWithError(streamErr)
	} else {
		pw.Close()
	}
	put := <-uploaded
	if streamErr != nil && (put.err == nil || errors.Is(put.err, streamErr)) {
		return nil, fmt.Errorf("snapshot of %s: %w", opts.Endpoint, streamErr)
	}
	if put.err != nil {
		// The upload failed first (and stopped the stream): its error is the cause.
		return nil, fmt.Errorf("uploading %s to %s: %w", m.Object, st, put.err)
	}

	m.DBSize, m.SHA256, m.Revision, m.CompactRevision = d.Size, d.SHA256, d.Revision, d.CompactRevision
	m.StoredSize = put.n
	m.KeyCount = countKeys(ctx, cli, m.Revision, log)
	if history != nil {
		if m.History, m.Tail, err = history(ctx, m.Revision); err != nil {
			// Nothing names the object yet: remove it so it does not cost storage.
			if derr := st.Delete(context.WithoutCancel(ctx), m.Object); derr != nil {
				log.WarnContext(ctx, "could not remove object without manifest", "object", m.Object, "err", derr)
			}
			return nil, fmt.Errorf("finding the history snapshot %s belongs to: %w", m.ID, err)
		}
	}
	m.CompletedAt = time.Now().UTC()
	if err := writeManifest(ctx, st, m); err != nil {
		if err := settleManifest(ctx, st, m, err, log); err != nil {
			return nil, err
		}
	}
	log.InfoContext(ctx, "snapshot saved", "id", m.ID, "revision", m.Revision, "db_size", m.DBSize,
		"stored_size", m.StoredSize, "duration", m.CompletedAt.Sub(started).Round(time.Millisecond))
	return m, nil
}

// settleManifest decides what a failed manifest PUT left. It may have landed all the same
// (a timeout, or a SIGTERM after the request was sent), so the object is removed only when
// the manifest is surely absent: a manifest must never name a deleted object. nil means
// the manifest is stored and the snapshot complete.
func settleManifest(ctx context.Context, st store.Store, m *Manifest, putErr error, log *slog.Logger) error {
	// A fresh context: the save's own may be the one that was cancelled.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	key := manifestKey(m.Cluster, m.ID)
	_, err := readManifest(cctx, st, key)
	switch {
	case err == nil:
		log.WarnContext(ctx, "the manifest was stored although its upload reported an error; the snapshot is complete",
			"id", m.ID, "manifest", key, "err", putErr)
		return nil
	case errors.Is(err, store.ErrNotExist):
		// Without its manifest the object is invisible; remove it so it does not cost storage.
		if derr := st.Delete(cctx, m.Object); derr != nil {
			log.WarnContext(ctx, "could not remove object without manifest", "object", m.Object, "err", derr)
		}
		return putErr
	}
	return fmt.Errorf("%w; whether it was stored is unknown (%v), so object %s is kept: `etcdguard snapshot list` shows the snapshot if it was",
		putErr, err, m.Object)
}

// settleTimeout bounds the look at a manifest after its PUT failed.
const settleTimeout = 30 * time.Second

// countKeys asks etcd how many keys there were at the snapshot's revision, so a restore
// can report it without reading the whole DB again.
func countKeys(ctx context.Context, cli *clientv3.Client, rev int64, log *slog.Logger) *int64 {
	resp, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly(), clientv3.WithRev(rev))
	if err != nil {
		log.WarnContext(ctx, "could not count the snapshot's keys; its manifest will not have key_count", "revision", rev, "err", err)
		return nil
	}
	return &resp.Count
}

// stream copies etcd's snapshot through the digest and the encoder into w and checks the
// trailer. It returns an error, without flushing the encoder, if anything is wrong, so the
// upload never completes with a bad snapshot.
func stream(src io.Reader, w io.Writer, opts SaveOptions) (digestResult, error) {
	enc, err := newEncoder(w, opts.Compression, opts.Level)
	if err != nil {
		return digestResult{}, err
	}
	d := newDigest()
	var dst io.Writer = io.MultiWriter(d, enc)
	if opts.Progress != nil {
		dst = io.MultiWriter(dst, &progressWriter{report: opts.Progress})
	}
	if _, err := io.CopyBuffer(dst, src, make([]byte, 256<<10)); err != nil {
		return digestResult{}, fmt.Errorf("streaming: %w", err)
	}
	res, err := d.finish()
	if err != nil {
		return res, err
	}
	if err := enc.Close(); err != nil {
		return res, fmt.Errorf("compressing: %w", err)
	}
	return res, nil
}

type progressWriter struct {
	total  int64
	report func(int64)
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.total += int64(len(b))
	p.report(p.total)
	return len(b), nil
}
