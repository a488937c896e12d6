package restore

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	etcdutl "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Replayed is what a replay reached.
type Replayed struct {
	Revision  int64     `json:"revision"`
	Time      time.Time `json:"time"`
	Revisions int       `json:"revisions_replayed"`
	Events    int       `json:"events_replayed"`
}

// Replay rebuilds the state at a point after the base snapshot: it restores the base into
// workdir, starts an embedded etcd on loopback, applies each captured revision as one
// transaction (so revision numbers stay identical), stops at targetRev or at the last
// revision captured at or before targetTime, and writes the result to <workdir>/replayed.db.
// Keys attached to leases are put back with leases of the same id and a one-year TTL, so
// nothing expires while replaying.
func Replay(ctx context.Context, st store.Store, base *snapshot.Manifest, segs []*delta.Manifest, targetRev int64, targetTime time.Time, workdir string) (*Replayed, string, error) {
	basePath := filepath.Join(workdir, "base.db")
	if err := download(ctx, st, base, basePath); err != nil {
		return nil, "", err
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, "", err
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dataDir := filepath.Join(workdir, "replay.etcd")
	if err := etcdutl.NewV3(zap.NewNop()).Restore(etcdutl.RestoreConfig{
		SnapshotPath: basePath, Name: "replay", OutputDataDir: dataDir, PeerURLs: []string{peer},
		InitialCluster: "replay=" + peer, InitialClusterToken: "etcdguard-replay",
	}); err != nil {
		return nil, "", fmt.Errorf("restoring base snapshot %s for replay: %w", base.ID, err)
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = "replay", dataDir
	curl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	purl, _ := url.Parse(peer)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*purl}, []url.URL{*purl}
	cfg.InitialCluster, cfg.InitialClusterToken = "replay="+peer, "etcdguard-replay"
	cfg.MaxTxnOps, cfg.MaxRequestBytes = 1<<20, 1<<30 // one huge revision (a range delete) is one transaction
	cfg.LogLevel, cfg.LogOutputs = "error", []string{filepath.Join(workdir, "replay-etcd.log")}
	cfg.UnsafeNoFsync = true // a scratch server; the result is snapshotted and checked
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("starting the replay etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		return nil, "", fmt.Errorf("the replay etcd did not become ready")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{curl.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		MaxCallSendMsgSize: 1 << 30})
	if err != nil {
		return nil, "", err
	}
	defer cli.Close()
	leases := pb.NewLeaseClient(cli.ActiveConnection())
	granted := map[int64]bool{}

	res := &Replayed{Revision: base.Revision, Time: base.CreatedAt}
	stop := fmt.Errorf("reached the target")
	next := base.Revision + 1
	for _, seg := range segs {
		if seg.ToRev < next {
			continue
		}
		if seg.FromRev > next {
			return nil, "", fmt.Errorf("deltas are missing revisions %d to %d: the latest reachable point from snapshot %s is revision %d (%s)",
				next, seg.FromRev-1, base.ID, res.Revision, res.Time.UTC().Format(time.RFC3339))
		}
		err := delta.ReadSegment(ctx, st, seg, func(r delta.Revision) error {
			if r.Rev < next {
				return nil
			}
			if (targetRev > 0 && r.Rev > targetRev) || (!targetTime.IsZero() && r.Time.After(targetTime)) {
				return stop
			}
			ops := make([]clientv3.Op, 0, len(r.Events))
			for _, ev := range r.Events {
				if ev.Delete {
					ops = append(ops, clientv3.OpDelete(string(ev.Key)))
					continue
				}
				var opts []clientv3.OpOption
				if ev.Lease != 0 {
					if !granted[ev.Lease] {
						if _, err := leases.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: ev.Lease, TTL: 365 * 24 * 3600}); err != nil && !granted[ev.Lease] {
							// the base snapshot may already hold it
							if _, terr := cli.TimeToLive(ctx, clientv3.LeaseID(ev.Lease)); terr != nil {
								return fmt.Errorf("re-creating lease %x: %w", ev.Lease, err)
							}
						}
						granted[ev.Lease] = true
					}
					opts = append(opts, clientv3.WithLease(clientv3.LeaseID(ev.Lease)))
				}
				ops = append(ops, clientv3.OpPut(string(ev.Key), string(ev.Value), opts...))
			}
			resp, err := cli.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				return fmt.Errorf("replaying revision %d: %w", r.Rev, err)
			}
			if resp.Header.Revision != r.Rev {
				return fmt.Errorf("replaying revision %d produced revision %d: the base snapshot and the deltas do not line up", r.Rev, resp.Header.Revision)
			}
			res.Revision, res.Time, next = r.Rev, r.Time, r.Rev+1
			res.Revisions++
			res.Events += len(r.Events)
			return nil
		})
		if err == stop {
			break
		}
		if err != nil {
			return nil, "", fmt.Errorf("%w (the latest reachable point is revision %d, %s)", err, res.Revision, res.Time.UTC().Format(time.RFC3339))
		}
	}
	out := filepath.Join(workdir, "replayed.db")
	f, err := os.Create(out)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	if _, err := f.ReadFrom(rc); err != nil {
		return nil, "", fmt.Errorf("snapshotting the replayed state: %w", err)
	}
	return res, out, f.Close()
}

func freePorts(n int) ([]int, error) {
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
