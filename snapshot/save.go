package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
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
	// StallTimeout gives up on a member that answers a request, or sends the next part of
	// the stream, no sooner than this (a stalled process, a dead disk, a lost network path
	// with no reset): without it a save would wait on it forever. Time the stream spends
	// waiting for the store is not counted. 0: no limit.
	StallTimeout time.Duration
}

// ErrStalled is wrapped by the error of a save whose etcd member stopped answering.
var ErrStalled = errors.New("stalled")

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
	if err := crypt.CheckWrite(ctx, st, opts.Cluster, "snapshot of "+opts.Endpoint+" by "+hostname(), true); err != nil {
		return nil, err
	}
	if opts.StaleUploadAge > 0 {
		n, err := st.AbortIncomplete(ctx, snapshotsPrefix(opts.Cluster), opts.StaleUploadAge)
		if err != nil {
			return nil, fmt.Errorf("cleaning up interrupted uploads in %s: %w", st, err)
		}
		if n > 0 {
			log.InfoContext(ctx, "aborted interrupted uploads", "count", n, "older_than", opts.StaleUploadAge)
		}
		cleanOrphans(ctx, st, opts, log)
	}

	sctx, cancelStatus := withStallTimeout(ctx, opts.StallTimeout)
	status, err := cli.Status(sctx, opts.Endpoint)
	cancelStatus()
	if err != nil {
		return nil, fmt.Errorf("etcd status of %s: %w", opts.Endpoint, err)
	}
	if err := etcdclient.SnapshotSource(opts.Endpoint, status); err != nil {
		return nil, err
	}
	var history HistoryFunc
	historyDone := false
	if opts.History != nil {
		hctx, stop := context.WithCancel(ctx)
		defer stop()
		history = opts.History(hctx, status.Header.Revision)
		// A save that fails before naming its history must still end, and wait for, the
		// watch that samples it: the etcd client's Close hangs on a watch left closing.
		defer func() {
			if !historyDone {
				stop()
				_, _, _ = history(hctx, 0)
			}
		}()
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
	// The store encrypts what is named so, in the stream after compression: the
	// manifest says to whom (public keys only), sha256 stays the raw snapshot's.
	if to := store.EncryptTo(st); len(to) > 0 {
		m.Encryption, m.Recipients, m.Object = "age", to, m.Object+store.EncryptedExt
	}

	// The stream gets its own cancel so a failed upload stops etcd from sending more, and
	// a member that stops sending is given up on (the watchdog cancels with errStall).
	ctx, cancelCause := context.WithCancelCause(ctx)
	cancel := func() { cancelCause(context.Canceled) }
	defer cancel()
	errStall := fmt.Errorf("etcd member %s at %s %w: it sent nothing for %s (--command-timeout); nothing was stored: "+
		"run the save again (it skips a member that does not answer), and check that member (SIGSTOPped, a hung disk, overloaded)",
		m.MemberID, opts.Endpoint, ErrStalled, opts.StallTimeout)
	wd := newWatchdog(opts.StallTimeout, func() { cancelCause(errStall) })
	defer wd.idle()
	wd.waiting() // opening the stream waits for etcd's first message
	resp, err := cli.SnapshotWithVersion(ctx)
	wd.idle()
	if err != nil {
		if errors.Is(context.Cause(ctx), ErrStalled) {
			return nil, errStall
		}
		return nil, fmt.Errorf("starting snapshot of %s: %w", opts.Endpoint, err)
	}
	// The manifest names the server's version (Status): the storage version the stream
	// carries is the cluster's major.minor.0, and only once the server has recorded it,
	// seconds after it started.
	defer resp.Snapshot.Close()
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

	d, streamErr := stream(wd.reader(resp.Snapshot), pw, opts)
	if streamErr != nil && errors.Is(context.Cause(ctx), ErrStalled) {
		streamErr = errStall
	}
	if streamErr != nil {
		pw.CloseWithError(streamErr)
	} else {
		pw.Close()
	}
	put := <-uploaded
	if errors.Is(streamErr, ErrStalled) {
		return nil, streamErr
	}
	if streamErr != nil && (put.err == nil || errors.Is(put.err, streamErr)) {
		// The member broke off (killed, restarted, cut off): another may be healthy, and
		// nothing of this attempt is visible, so trying again is all it takes.
		return nil, fmt.Errorf("snapshot of etcd member %s at %s: %w; nothing was stored: run the save again (it snapshots the first healthy of --endpoints)",
			m.MemberID, opts.Endpoint, streamErr)
	}
	if put.err != nil {
		// The upload failed first (and stopped the stream): its error is the cause.
		return nil, fmt.Errorf("uploading %s to %s: %w", m.Object, st, put.err)
	}

	m.DBSize, m.SHA256, m.Revision, m.CompactRevision = d.Size, d.SHA256, d.Revision, d.CompactRevision
	m.StoredSize = put.n
	cctx, cancelCount := withStallTimeout(ctx, opts.StallTimeout)
	m.KeyCount = countKeys(cctx, cli, m.Revision, log)
	cancelCount()
	if history != nil {
		historyDone = true
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
	markFirst(ctx, st, m, log)
	if opts.StaleUploadAge > 0 {
		cleanOrphans(ctx, st, opts, log) // the second look at what the first marked
	}
	log.InfoContext(ctx, "snapshot saved", "id", m.ID, "revision", m.Revision, "db_size", m.DBSize,
		"stored_size", m.StoredSize, "duration", m.CompletedAt.Sub(started).Round(time.Millisecond))
	return m, nil
}

// removeOrphans deletes the snapshot objects of the cluster that no manifest names: what a
// save killed between storing its object and its manifest left, or a prune killed between
// deleting a manifest and its object. No listing shows them and nothing else removes them,
// and each is a whole snapshot's size.
//
// An object's time in the store cannot tell a leftover from a save about to write its
// manifest (S3 dates a multipart object by when its upload began, which may be hours
// before it completes), so it takes two looks olderThan apart: the first leaves a marker,
// <id>.orphan, dated by the store when it is written; an object still without a manifest
// once its marker is olderThan old goes, with the marker. Save looks before it streams and
// after its manifest is stored. A locked object stays until its lock ends.
func removeOrphans(ctx context.Context, st store.Store, cluster string, olderThan time.Duration) (int, error) {
	prefix := snapshotsPrefix(cluster)
	objs, err := st.List(ctx, prefix)
	if err != nil {
		return 0, err
	}
	manifests, markers, objects := map[string]bool{}, map[string]time.Time{}, map[string][]string{}
	for _, o := range objs {
		name := strings.TrimPrefix(o.Key, prefix)
		id, ext, _ := strings.Cut(name, ".")
		switch {
		case strings.Contains(name, "/") || isRecord(o.Key):
		case ext == strings.TrimPrefix(manifestExt, "."):
			manifests[id] = true
		case ext == "orphan":
			markers[id] = o.ModTime
		case strings.HasPrefix(ext, "db"):
			objects[id] = append(objects[id], o.Key)
		}
	}
	cutoff := time.Now().Add(-olderThan)
	n := 0
	unmark := func(id string) error {
		if err := st.Delete(ctx, orphanKey(cluster, id)); err != nil && !errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("deleting %s: %w", orphanKey(cluster, id), err)
		}
		return nil
	}
	for id := range markers {
		if manifests[id] || len(objects[id]) == 0 { // it was a save finishing, or it is gone
			if err := unmark(id); err != nil {
				return n, err
			}
		}
	}
	for id, keys := range objects {
		if manifests[id] {
			continue
		}
		marked, ok := markers[id]
		if !ok {
			if err := store.PutBytes(ctx, st, orphanKey(cluster, id), nil); err != nil {
				return n, fmt.Errorf("marking %s: %w", orphanKey(cluster, id), err)
			}
			continue
		}
		if !marked.Before(cutoff) {
			continue
		}
		// Looked at again right before: the listing may be a while old.
		if _, err := st.Stat(ctx, manifestKey(cluster, id)); !errors.Is(err, store.ErrNotExist) {
			continue // there now, or unknown
		}
		locked := false
		for _, key := range keys {
			switch err := st.Delete(ctx, key); {
			case errors.Is(err, store.ErrLocked):
				locked = true
			case err != nil:
				return n, fmt.Errorf("deleting %s: %w", key, err)
			default:
				n++
			}
		}
		if !locked {
			if err := unmark(id); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// cleanOrphans is removeOrphans for a save: not fatal, as an object without a manifest costs
// storage, never correctness.
func cleanOrphans(ctx context.Context, st store.Store, opts SaveOptions, log *slog.Logger) {
	if n, err := removeOrphans(ctx, st, opts.Cluster, opts.StaleUploadAge); err != nil {
		log.WarnContext(ctx, "could not remove the objects of interrupted saves", "err", err)
	} else if n > 0 {
		log.InfoContext(ctx, "removed the objects of interrupted saves (no manifest names them)", "count", n, "older_than", opts.StaleUploadAge)
	}
}

func orphanKey(cluster, id string) string { return snapshotsPrefix(cluster) + id + ".orphan" }

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
	d := newDigestBehind()
	defer d.stop()
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

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func withStallTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// watchdog calls fire when etcd has been waited on for its timeout without a byte. It runs
// only while a read from etcd is in progress: a stream blocked on a slow store upload is
// not etcd's stall.
type watchdog struct {
	d time.Duration
	t *time.Timer // nil: no limit
}

func newWatchdog(d time.Duration, fire func()) *watchdog {
	w := &watchdog{d: d}
	if d > 0 {
		w.t = time.AfterFunc(d, fire)
		w.t.Stop()
	}
	return w
}

func (w *watchdog) waiting() {
	if w.t != nil {
		w.t.Reset(w.d)
	}
}

func (w *watchdog) idle() {
	if w.t != nil {
		w.t.Stop()
	}
}

func (w *watchdog) reader(r io.Reader) io.Reader {
	if w.t == nil {
		return r
	}
	return watchedReader{r, w}
}

type watchedReader struct {
	r io.Reader
	w *watchdog
}

func (r watchedReader) Read(p []byte) (int, error) {
	r.w.waiting()
	n, err := r.r.Read(p)
	r.w.idle()
	return n, err
}
