// Package daemon runs etcdguard on every control-plane node: scheduled snapshots taken by
// exactly one elected member, verification and retention after each, freshness checks on
// every node, Prometheus metrics and health endpoints, and a graceful SIGTERM.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/robfig/cron/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Config configures the daemon.
type Config struct {
	Etcd      etcdclient.Config
	Store     store.Store
	Cluster   string // resolved by the caller (deploy/ always sets it)
	Schedule  string // cron spec: 5 fields, optional seconds, or descriptors like @every 30s
	Save      snapshot.SaveOptions
	Verify    bool
	Retention snapshot.Retention
	// NoPrune leaves retention and the clean-up of interrupted uploads to another role
	// (`etcdguard snapshot prune` with delete rights), so this one needs none.
	NoPrune bool
	// NoCatchUp waits for the schedule's next tick after an election even when a tick was
	// missed (see catchUp).
	NoCatchUp     bool
	Policy        alerting.Policy
	ElectionTTL   time.Duration
	CheckInterval time.Duration // freshness evaluation, on every node
	Listen        string        // metrics and health; "" disables
	Notifiers     []alerting.Notifier
	AlertRepeat   time.Duration // remind webhook and Slack receivers of a firing alert this often
	AlertResend   time.Duration // re-send firing alerts to Alertmanager this often (its client contract)
	AlertAfter    int           // failed runs in a row before EtcdSnapshotFailing fires
	// Delta capture for point-in-time restore, run by the leader.
	Delta         bool
	DeltaFlush    time.Duration
	DeltaMaxBytes int
}

// ParseSchedule accepts what --schedule documents.
func ParseSchedule(spec string) (s cron.Schedule, err error) {
	// robfig/cron panics on some input ("TZ=" with nothing after it, found by
	// FuzzParseSchedule): a typo in a flag must be an error, never a crash loop.
	invalid := func(why error) error {
		return fmt.Errorf("invalid --schedule %q: %w (examples: \"0 */1 * * *\", \"*/30 * * * * *\", \"@every 30s\", \"@hourly\")", spec, why)
	}
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, invalid(fmt.Errorf("%v", r))
		}
	}()
	p := cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	if s, err = p.Parse(spec); err != nil {
		return nil, invalid(err)
	}
	// "0 0 30 2 *" parses, but has no next time: the schedule loop would spin.
	if s.Next(time.Now()).IsZero() {
		return nil, invalid(errors.New("it names no date that exists"))
	}
	return s, nil
}

// CheckAlertResend accepts what --alert-alertmanager-resend documents.
func CheckAlertResend(d time.Duration) error {
	if d < alerting.MinResend || d > alerting.MaxResend {
		return fmt.Errorf("invalid --alert-alertmanager-resend %s: use %s to %s (Alertmanager expects a client to re-send every 30s to 3m)", d, alerting.MinResend, alerting.MaxResend)
	}
	return nil
}

// Daemon is a running etcdguard daemon.
type Daemon struct {
	cfg      Config
	schedule cron.Schedule
	m        *metrics
	log      *slog.Logger
	leader   atomic.Bool
	term     atomic.Pointer[leaderTerm] // nil unless this daemon leads
	ready    atomic.Bool
	running  sync.Mutex // one snapshot run at a time
	addr     net.Addr
	addrOnce chan struct{}
	alerter  *alerting.Alerter
	failing  atomic.Int64 // failed snapshot runs in a row
	lastFail atomic.Pointer[time.Time]

	deltaFailingSince atomic.Pointer[deltaEvent] // capture failing, not stored since
	// pendingSince is when each alert's condition was first seen (name/severity), for
	// its rule's For. checkOnce runs on checkLoop and after every snapshot run on the
	// term's goroutine, so checkMu serialises it.
	checkMu      sync.Mutex
	pendingSince map[string]time.Time
	// lastUsable is the newest usable snapshot this daemon has seen in the store (under
	// checkMu): with the store's record of a first snapshot (snapshot.EverStored), what
	// makes an empty store EtcdSnapshotLost at once rather than a new install's
	// EtcdSnapshotMissing after 75 minutes, even if someone deleted that record too.
	lastUsable *snapshot.Manifest
	deltaLost  atomic.Pointer[deltaEvent] // the last loss of revisions to compaction
	// lastCatchUp is when a term last tried to catch up a missed snapshot (catchUp).
	lastCatchUp atomic.Pointer[time.Time]
}

// New checks the configuration; Run starts the work.
func New(cfg Config) (*Daemon, error) {
	s, err := ParseSchedule(cfg.Schedule)
	if err != nil {
		return nil, err
	}
	if cfg.Cluster == "" {
		return nil, errors.New("the daemon needs --cluster: a restore changes etcd's cluster id, and snapshots must stay under one name")
	}
	if cfg.ElectionTTL < 2*time.Second {
		return nil, fmt.Errorf("--election-ttl %s is too short: use at least 2s", cfg.ElectionTTL)
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = time.Minute
	}
	if cfg.AlertRepeat <= 0 {
		cfg.AlertRepeat = time.Hour
	}
	if cfg.AlertResend == 0 {
		cfg.AlertResend = alerting.DefaultResend
	}
	if err := CheckAlertResend(cfg.AlertResend); err != nil {
		return nil, err
	}
	if cfg.AlertAfter <= 0 {
		cfg.AlertAfter = 3
	}
	if cfg.DeltaFlush <= 0 {
		cfg.DeltaFlush = 5 * time.Second
	}
	cfg.Save.Cluster = cfg.Cluster
	m := newMetrics(cfg.Cluster)
	m.setThresholds(cfg.Policy, cfg.AlertAfter)
	return &Daemon{cfg: cfg, schedule: s, m: m, addrOnce: make(chan struct{}),
		alerter: &alerting.Alerter{Notifiers: cfg.Notifiers, Repeat: cfg.AlertRepeat, Resend: cfg.AlertResend},
		log:     slog.With("component", "daemon", "cluster", cfg.Cluster)}, nil
}

// Addr is the address the metrics server listens on, once it does.
func (d *Daemon) Addr() net.Addr { <-d.addrOnce; return d.addr }

// Run works until ctx is cancelled (SIGTERM), then stops the schedule, cancels an
// in-flight upload (which aborts its multipart upload), resigns leadership and returns.
func (d *Daemon) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	srv, err := d.serve()
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if srv != nil {
			srv.Shutdown(sctx)
		}
	}()
	if len(d.cfg.Notifiers) == 0 {
		d.log.Info("no --alert-* receiver: this daemon pages no one itself; apply deploy/prometheus-rule.yaml and a PodMonitor (deploy/monitoring/) so Prometheus does")
	}
	wg.Go(func() { d.campaign(ctx) })
	wg.Go(func() { d.checkLoop(ctx) })
	wg.Go(func() { d.alerter.Run(ctx) })
	d.scheduleLoop(ctx)
	wg.Wait()
	d.log.Info("daemon stopped")
	return nil
}

func (d *Daemon) serve() (*http.Server, error) {
	if d.cfg.Listen == "" {
		close(d.addrOnce)
		return nil, nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() {
			http.Error(w, "not ready: etcd or the store has not answered yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	l, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening on --listen %s: %w", d.cfg.Listen, err)
	}
	d.addr = l.Addr()
	close(d.addrOnce)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	return srv, nil
}

// campaign keeps trying to become the one member that takes snapshots, through an etcd
// election on /etcdguard/<cluster>/leader; a leader that dies loses its lease within the
// election TTL and another daemon takes over.
func (d *Daemon) campaign(ctx context.Context) {
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s/%d", host, os.Getpid())
	for ctx.Err() == nil {
		err := d.leadOnce(ctx, id)
		d.leader.Store(false)
		d.m.isLeader.Set(0)
		if err != nil && ctx.Err() == nil {
			d.log.Warn("leader election failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// leadOnce campaigns with one etcd session and, once elected, leads until ctx ends or the
// session may be gone. Leadership is a fence, not a check: everything only the leader
// does runs under the term's context, cancelled the moment the lease may have expired,
// and the store refuses the term's writes from then on (store.WithFence).
func (d *Daemon) leadOnce(ctx context.Context, id string) error {
	cli, err := etcdclient.New(ctx, d.cfg.Etcd)
	if err != nil {
		return err
	}
	defer etcdclient.Close(cli)
	granted := time.Now()
	lease, err := cli.Grant(ctx, int64(d.cfg.ElectionTTL.Seconds()))
	if err != nil {
		return fmt.Errorf("etcd lease for the election: %w", err)
	}
	ttl := time.Duration(lease.TTL) * time.Second
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(lease.ID), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer sess.Close()
	fence := newLeaseFence(granted, ttl)
	lctx, cancel := context.WithCancelCause(store.WithFence(ctx, fence.check))
	term := &leaderTerm{ctx: lctx, cancel: cancel}
	var keeper sync.WaitGroup
	keeper.Go(func() { fence.keep(lctx, cli, lease.ID, ttl, sess.Done(), cancel) })
	defer keeper.Wait()
	defer term.end(nil)
	d.ready.Store(true)
	el := concurrency.NewElection(sess, "/etcdguard/"+d.cfg.Cluster+"/leader")
	if err := el.Campaign(lctx, id); err != nil {
		if cause := context.Cause(lctx); ctx.Err() == nil && cause != nil {
			return cause
		}
		return err
	}
	d.term.Store(term)
	defer d.term.Store(nil)
	// A new term counts its own failed runs: a count kept from an earlier term, while
	// another daemon's runs succeeded, would page EtcdSnapshotFailing at once. (After its
	// term a daemon keeps its count until a snapshot newer than its last failure shows
	// another's runs succeed: checkOnce.)
	d.resetFailing()
	d.leader.Store(true)
	d.m.isLeader.Set(1)
	d.log.Info("elected: this daemon takes the snapshots", "id", id)
	// Until now another daemon's election key kept this one quiet (notifies); what it
	// holds must reach the receivers now, not at the next --check-interval.
	term.start(func() { d.checkOnce(lctx) })
	term.start(func() { d.abortStale(lctx) })
	// Delta capture runs under the term too, so two daemons never capture at once; but a
	// graceful stop lets it drain (store what it buffered) while the lease still holds,
	// and losing the lease stops it at once, writing nothing.
	drain, captured := make(chan struct{}), make(chan struct{})
	cctx, stopCapture := context.WithCancelCause(context.WithoutCancel(lctx))
	defer stopCapture(nil)
	context.AfterFunc(lctx, func() {
		if ctx.Err() == nil {
			stopCapture(context.Cause(lctx))
		}
	})
	var resumed chan struct{} // closed once capture has resumed (catchUp waits for it)
	if d.cfg.Delta {
		resumed = make(chan struct{})
	}
	if !d.cfg.Delta || !term.start(func() { defer close(captured); d.captureDeltas(cctx, cli, drain, resumed) }) {
		close(captured)
	}
	if !d.cfg.NoCatchUp {
		term.start(func() { d.catchUp(lctx, resumed) })
	}
	select {
	case <-ctx.Done():
	case <-lctx.Done():
	}
	d.term.Store(nil)
	if ctx.Err() == nil {
		term.end(nil)
		return fmt.Errorf("lost leadership, stopped what only the leader does: %w", context.Cause(lctx))
	}
	// Shutting down while the lease holds: capture stores what it buffered, within reason
	// (it bounds its own drain; this bounds a full snapshot it may be taking).
	close(drain)
	select {
	case <-captured:
	case <-time.After(10 * time.Second):
		stopCapture(errors.New("shutting down"))
	}
	term.end(nil)
	rctx, cancelResign := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancelResign()
	if err := el.Resign(rctx); err != nil {
		d.log.Warn("could not resign leadership; the lease expires by itself", "err", err)
	}
	d.log.Info("resigned leadership")
	return nil
}

// abortStale removes what interrupted uploads left behind. Only the leader does, under
// its fence: it is the one daemon that uploads, so no live upload of a daemon is aborted.
func (d *Daemon) abortStale(ctx context.Context) {
	if d.cfg.Save.StaleUploadAge <= 0 || d.cfg.NoPrune {
		return
	}
	if n, err := d.cfg.Store.AbortIncomplete(ctx, d.cfg.Cluster+"/", d.cfg.Save.StaleUploadAge); err != nil {
		d.log.Warn("could not clean up interrupted uploads", "err", err)
	} else if n > 0 {
		d.log.Info("aborted interrupted uploads", "count", n)
	}
}

// catchUp takes a snapshot at once when a new term finds a scheduled one missed: a tick
// of the schedule fell after the newest usable snapshot, because the last leader died
// during its run or no daemon led at the tick. Waiting for the next tick would leave up to
// two intervals (a day, on a daily schedule) without one. A store with none gets its first
// now. With delta capture it waits until capture has resumed first: capture starts a new
// history (after a restore, or past a compaction) with a full snapshot of its own, which
// then counts. It tries again, spaced out, until the schedule's next tick takes over.
func (d *Daemon) catchUp(ctx context.Context, captureResumed <-chan struct{}) {
	if captureResumed != nil {
		select {
		case <-ctx.Done():
			return
		case <-captureResumed:
		case <-time.After(catchUpSpacing): // capture keeps failing: try anyway
		}
	}
	tick := d.schedule.Next(time.Now())
	for attempt := 0; ; attempt++ {
		// Spaced from the last attempt, of this term or an earlier one: terms that come and
		// go with a flapping lease must not each start a full snapshot of a struggling etcd.
		if last := d.lastCatchUp.Load(); last != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(last.Add(catchUpSpacing << min(attempt, 4)))):
			}
		}
		if !time.Now().Before(tick) {
			return // the schedule's tick has come: it goes on from here
		}
		if done := d.catchUpOnce(ctx); done || ctx.Err() != nil {
			return
		}
	}
}

// catchUpSpacing is the least time between two catch-up attempts (doubling on failures).
const catchUpSpacing = 30 * time.Second

// catchUpOnce decides and, if a tick was missed, snapshots, holding d.running throughout:
// a scheduled run or capture's snapshot that ended a moment ago is seen in the listing,
// and one that runs now is left to finish. It says whether catching up is over.
func (d *Daemon) catchUpOnce(ctx context.Context) (done bool) {
	if !d.running.TryLock() {
		return true // a snapshot is being taken
	}
	defer d.running.Unlock()
	lctx, cancel := context.WithTimeout(ctx, checkTimeout)
	list, err := snapshot.List(lctx, d.cfg.Store, d.cfg.Cluster)
	cancel()
	now := time.Now()
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("cannot tell whether a scheduled snapshot was missed; trying again", "err", err)
			d.lastCatchUp.Store(&now)
		}
		return false
	}
	newest := snapshot.Newest(list)
	if d.cfg.Verify && newest != nil && newest.Verification == snapshot.Unverified {
		// A leader that died between its save and its verification, or a save by hand,
		// left it: unchecked, it would count as fresh until the next tick.
		d.log.Info("catch-up verification: the newest snapshot was never verified", "snapshot", newest.ID)
		switch corrupt, _, err := d.verify(ctx, newest); {
		case ctx.Err() != nil:
			return true
		case corrupt:
			d.fail("verify", err)
			id := newest.ID
			newest = snapshot.Newest(slices.DeleteFunc(list, func(m *snapshot.Manifest) bool { return m.ID == id }))
		case err != nil:
			// Not found corrupt: it may be fine (an identity this daemon lacks, a store
			// that failed this once). The schedule decides as without the check.
			d.log.Warn("could not verify the newest snapshot; catching up as if it were fresh", "snapshot", newest.ID, "err", err)
		}
		now = time.Now() // a tick may have come while verifying: the run lock skipped it
	}
	// Exact for any schedule: the tick that follows the newest snapshot has passed.
	if newest != nil && !d.schedule.Next(newest.CreatedAt).Before(now) {
		return true
	}
	if newest == nil {
		d.log.Info("catch-up snapshot: the store holds no usable snapshot of this cluster")
	} else {
		d.log.Info("catch-up snapshot: a scheduled snapshot was missed", "newest", newest.ID,
			"missed_tick", d.schedule.Next(newest.CreatedAt).UTC().Format(time.RFC3339))
	}
	d.lastCatchUp.Store(&now)
	return d.snapshotRun(ctx)
}

// scheduleLoop runs a snapshot at each tick of the schedule, if this daemon leads, under
// its leadership term.
func (d *Daemon) scheduleLoop(ctx context.Context) {
	next := d.schedule.Next(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		next = d.schedule.Next(time.Now())
		term := d.term.Load()
		if term == nil {
			continue
		}
		if !d.running.TryLock() {
			d.log.Warn("the previous snapshot is still running; skipping this tick")
			continue
		}
		if !term.start(func() {
			defer d.running.Unlock()
			d.snapshotRun(term.ctx)
		}) {
			d.running.Unlock()
		}
	}
}

var errNoEtcd = errors.New("no healthy etcd endpoint")

// checkTimeout bounds one freshness check's reads of the store.
const checkTimeout = 5 * time.Minute

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// save takes one full snapshot from the first healthy endpoint (the local member), in
// history, or in the history etcd is found to continue if "".
func (d *Daemon) save(ctx context.Context, history string) (*snapshot.Manifest, error) {
	cli, endpoint, _, err := etcdclient.FirstHealthy(ctx, d.cfg.Etcd)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoEtcd, err)
	}
	defer etcdclient.Close(cli)
	opts := d.cfg.Save
	opts.Endpoint = endpoint
	opts.History = delta.Identify(cli, d.cfg.Store, d.cfg.Cluster)
	if history != "" {
		opts.History = delta.InHistory(cli, history)
	}
	return snapshot.Save(ctx, cli, d.cfg.Store, opts)
}

// captureDeltas writes the keyspace's changes as delta segments while this daemon leads.
func (d *Daemon) captureDeltas(ctx context.Context, cli *clientv3.Client, drain <-chan struct{}, resumed chan struct{}) {
	var resume sync.Once
	c := &delta.Capturer{
		Cli: cli, Store: d.cfg.Store, Cluster: d.cfg.Cluster, Flush: d.cfg.DeltaFlush, MaxBytes: d.cfg.DeltaMaxBytes, Drain: drain,
		Snapshot: func(ctx context.Context, history string) (*snapshot.Manifest, error) {
			d.running.Lock() // not at the same time as a scheduled snapshot
			defer d.running.Unlock()
			return d.save(ctx, history)
		},
		OnSegment: func(m *delta.Manifest) { d.m.deltaSegments.Inc() },
		OnProgress: func(rev int64, lag time.Duration, stored bool) {
			resume.Do(func() { close(resumed) })
			d.m.deltaRevision.Set(float64(rev))
			d.m.deltaLag.Set(lag.Seconds())
			if stored { // storing works again (an idle cluster writes no segment to say so)
				d.deltaFailingSince.Store(nil)
				d.m.deltaCaptureFailing.Set(0)
			}
		},
		OnTrouble: func(kind string, err error) {
			d.m.deltaInterruptions.WithLabelValues(kind).Inc()
			now := time.Now()
			switch kind {
			case "compacted":
				d.deltaLost.Store(&deltaEvent{at: now, err: err})
			case "new_history":
				// A restore: a new timeline starts with a full snapshot; nothing was lost.
			default: // keep when it started failing, with the newest error
				if prev := d.deltaFailingSince.Load(); prev != nil {
					now = prev.at
				}
				d.deltaFailingSince.Store(&deltaEvent{at: now, err: err})
				d.m.deltaCaptureFailing.Set(1)
			}
		},
	}
	c.Run(ctx)
	// Another daemon captures now; a stale lag here must not hold up an alert.
	d.m.deltaLag.Set(0)
	d.deltaFailingSince.Store(nil)
	d.m.deltaCaptureFailing.Set(0)
}

// deltaEvent is a delta capture interruption, kept until the alert it raises is evaluated.
type deltaEvent struct {
	at  time.Time
	err error
}

// deltaAlerts are the leader's delta capture conditions: capture failing for over a
// minute (transient watch reconnects do not page), and revisions lost to compaction
// within the last alert-repeat period (an event, so it fires once and then resolves).
func (d *Daemon) deltaAlerts(now time.Time) []alerting.Alert {
	var out []alerting.Alert
	if e := d.deltaFailingSince.Load(); e != nil && now.Sub(e.at) >= time.Minute {
		out = append(out, alerting.DeltaCaptureFailing.Alert(d.cfg.Cluster,
			fmt.Sprintf("delta capture has stored nothing since %s (point-in-time restore stops there): %v; it keeps retrying, see the daemon's log",
				e.at.UTC().Format(time.RFC3339), e.err)))
	}
	if e := d.deltaLost.Load(); e != nil && now.Sub(e.at) < d.cfg.AlertRepeat {
		out = append(out, alerting.DeltaGap.Alert(d.cfg.Cluster,
			fmt.Sprintf("%v; a full snapshot bridged them, so points inside that gap cannot be restored exactly (see `etcdguard timeline`); capture more often or compact less eagerly", e.err)))
	}
	return out
}

// verify checks m and records the verdict. corrupt says it was found corrupt: recorded
// so, it no longer counts as fresh, is never restored and fills no retention slot. An
// error comes with the failure reason it counts as.
func (d *Daemon) verify(ctx context.Context, m *snapshot.Manifest) (corrupt bool, reason string, err error) {
	rep, err := snapshot.Verify(ctx, d.cfg.Store, m)
	if err != nil {
		return false, "verify", err
	}
	if err := snapshot.RecordVerification(ctx, d.cfg.Store, rep); err != nil {
		return false, "store", err
	}
	if !rep.OK {
		return true, "verify", fmt.Errorf("snapshot %s failed verification: %v", m.ID, rep.Problems)
	}
	return false, "", nil
}

// snapshotRun saves, optionally verifies, then prunes, and says whether all of it
// succeeded. Retention never runs after a failed save or verification.
func (d *Daemon) snapshotRun(ctx context.Context) bool {
	// A run stopped by a graceful stop or a lost lease is no failed run: counted, a
	// rolling update could page EtcdSnapshotFailing on its way down.
	failed := func(reason string, err error) bool {
		if ctx.Err() != nil {
			d.log.Info("snapshot run cancelled; nothing partial was left", "why", context.Cause(ctx), "err", err)
			return false
		}
		d.fail(reason, err)
		return false
	}
	start := time.Now()
	m, err := d.save(ctx, "")
	switch {
	case errors.Is(err, errNoEtcd):
		return failed("etcd", err)
	case errors.Is(err, crypt.ErrPolicy): // not the store's fault: its config's
		return failed("encryption", err)
	case err != nil:
		return failed("store", err)
	}
	d.m.duration.Observe(time.Since(start).Seconds())
	d.m.sizeRaw.Set(float64(m.DBSize))
	d.m.sizeStored.Set(float64(m.StoredSize))
	if d.cfg.Verify {
		if _, reason, err := d.verify(ctx, m); err != nil {
			return failed(reason, err)
		}
	}
	if !d.cfg.NoPrune {
		ds, err := snapshot.Prune(ctx, d.cfg.Store, d.cfg.Cluster, d.cfg.Retention, time.Now(), false)
		if err != nil {
			return failed("retention", err)
		}
		for _, dec := range ds {
			if !dec.Keep {
				d.m.retentionDelete.Inc()
			}
		}
		if _, err := delta.Prune(ctx, d.cfg.Store, d.cfg.Cluster, ds, false); err != nil {
			return failed("retention", err)
		}
	}
	d.resetFailing()
	d.checkOnce(ctx)
	return true
}

// resetFailing ends a count of failed runs in a row.
func (d *Daemon) resetFailing() {
	d.failing.Store(0)
	d.m.failingInARow.Set(0)
}

func (d *Daemon) fail(reason string, err error) {
	now := time.Now()
	d.lastFail.Store(&now)
	d.m.failures.WithLabelValues(reason).Inc()
	d.m.failingInARow.Set(float64(d.failing.Add(1)))
	d.log.Error("snapshot run failed", "reason", reason, "err", err, "failures_in_a_row", d.failing.Load())
	d.checkOnce(context.Background())
}

// checkLoop evaluates freshness on every node, leader or not, so the age metric and its
// alert live on even when the leader is gone.
func (d *Daemon) checkLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.CheckInterval)
	defer t.Stop()
	for {
		d.checkOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkOnce evaluates freshness, updates the metrics and raises or clears alerts.
func (d *Daemon) checkOnce(ctx context.Context) {
	d.checkMu.Lock()
	defer d.checkMu.Unlock()
	var active []alerting.Alert
	now := time.Now()
	held := map[string]bool{}
	// An alert fires once its condition has held for the rule's For, as the
	// PrometheusRule's `for` makes Prometheus wait: a new install has no snapshot until its
	// first scheduled one, and must not page before the rule would.
	alert := func(r alerting.Rule, description string) {
		key := r.Name + "/" + r.Severity
		held[key] = true
		since, ok := d.pendingSince[key]
		if !ok {
			since = now
			d.pendingSince[key] = now
		}
		if now.Sub(since) >= r.For {
			active = append(active, r.Alert(d.cfg.Cluster, description))
		}
	}
	if d.pendingSince == nil {
		d.pendingSince = map[string]time.Time{}
	}
	defer func() {
		for key := range d.pendingSince {
			if !held[key] {
				delete(d.pendingSince, key)
			}
		}
	}()
	// A stalled store must not hold checkMu (and every alert with it) for one store
	// timeout per manifest.
	lctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	list, err := snapshot.List(lctx, d.cfg.Store, d.cfg.Cluster)
	var ever bool
	if err == nil {
		ever = len(list) > 0 || d.lastUsable != nil
		if !ever {
			ever, err = snapshot.EverStored(lctx, d.cfg.Store, d.cfg.Cluster)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("cannot read the store", "err", err)
		d.m.storeUp.Set(0)
		alert(alerting.StoreUnreachable, "etcdguard cannot read the snapshot store: "+err.Error())
	} else {
		d.m.storeUp.Set(1)
		d.m.stored.Set(float64(len(list)))
		d.m.everStored.Set(b2f(ever))
		newest := snapshot.Newest(list)
		if lf := d.lastFail.Load(); newest != nil && lf != nil && newest.CreatedAt.After(*lf) && !d.leader.Load() && d.failing.Load() > 0 {
			// Another daemon's run succeeded since this one's last failed: the failures
			// it paged, as leader, are over (and it resolves what it paged).
			d.resetFailing()
		}
		if newest != nil {
			d.lastUsable = newest
			d.m.lastSuccess.Set(float64(newest.CreatedAt.Unix()))
			d.m.age.Set(time.Since(newest.CreatedAt).Seconds())
		} else { // none usable (any more): what EtcdSnapshotMissing's rule looks for
			d.m.lastSuccess.Set(0)
			d.m.age.Set(-1)
		}
		f := alerting.Evaluate(d.cfg.Cluster, list, time.Now(), d.cfg.Policy)
		switch {
		case f.Status == alerting.OK:
		case newest == nil && len(list) > 0:
			alert(alerting.SnapshotLost, f.Message)
		case newest == nil && ever:
			seen := ""
			if d.lastUsable != nil {
				seen = " (the newest usable one this daemon saw was " + d.lastUsable.ID + ")"
			}
			alert(alerting.SnapshotLost, fmt.Sprintf("the store held snapshots of %s%s and holds none now: take one at once with `etcdguard snapshot save`, then find what deleted them (a lifecycle rule, a prune with other flags, a person: the bucket's versioning and access logs)",
				d.cfg.Cluster, seen))
		case newest == nil:
			alert(alerting.SnapshotMissing, f.Message)
		case f.Status == alerting.Warning:
			alert(alerting.SnapshotAging, f.Message)
		default:
			alert(alerting.SnapshotTooOld, f.Message)
		}
		if f.Status != alerting.OK {
			d.log.Warn("snapshot freshness", "status", f.Status.String(), "message", f.Message)
		}
	}
	if n := d.failing.Load(); n >= int64(d.cfg.AlertAfter) {
		alert(alerting.SnapshotFailing, fmt.Sprintf("%d snapshot runs in a row failed; see the etcdguard daemon's log", n))
	}
	active = append(active, d.deltaAlerts(time.Now())...)
	if err := d.alerter.Update(ctx, active, time.Now(), d.notifies(ctx)); err != nil && ctx.Err() == nil {
		d.log.Warn("alerts not delivered", "err", err)
	}
}

// notifies says whether this daemon sends alerts: the leader does; the others do only when
// no daemon leads (or etcd cannot say), so one outage is one page, not one per master.
func (d *Daemon) notifies(ctx context.Context) bool {
	if d.leader.Load() {
		return true
	}
	// Bounded, and refused at once by a member without a leader: etcd's client retries an
	// unanswered read until its context ends, and this one holds checkMu. A cluster
	// that cannot say is one where no daemon may lead: notify.
	ctx, cancel := context.WithTimeout(ctx, notifyAskTimeout)
	defer cancel()
	cli, err := etcdclient.New(ctx, d.cfg.Etcd)
	if err != nil {
		return true
	}
	defer cli.Close()
	resp, err := cli.Get(clientv3.WithRequireLeader(ctx), "/etcdguard/"+d.cfg.Cluster+"/leader/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	return err != nil || resp.Count == 0
}

// notifyAskTimeout bounds asking etcd whether a daemon leads.
const notifyAskTimeout = 10 * time.Second
