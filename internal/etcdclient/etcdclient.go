// Package etcdclient turns etcdguard's etcd flags (the same names and meaning as
// etcdctl's) into clients, and picks the member a snapshot is taken from.
package etcdclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Config holds the etcd connection flags.
type Config struct {
	Endpoints      []string
	CACert         string
	Cert           string
	Key            string
	User           string // "name" or "name:password", as etcdctl accepts
	Password       string
	DialTimeout    time.Duration
	CommandTimeout time.Duration
}

func (c Config) clientConfig(endpoints []string) (clientv3.Config, error) {
	cc := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: c.DialTimeout,
		Logger:      zap.NewNop(), // the client's retry warnings would drown our own messages
	}
	if c.User != "" {
		name, pass, hasPass := strings.Cut(c.User, ":")
		if !hasPass {
			pass = c.Password
		}
		cc.Username, cc.Password = name, pass
	}
	if c.CACert != "" || c.Cert != "" || c.Key != "" {
		if (c.Cert == "") != (c.Key == "") {
			return cc, errors.New("--cert and --key must be given together")
		}
		tlsInfo := transport.TLSInfo{TrustedCAFile: c.CACert, CertFile: c.Cert, KeyFile: c.Key}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return cc, fmt.Errorf("loading TLS files (--cacert %q, --cert %q, --key %q): %w", c.CACert, c.Cert, c.Key, err)
		}
		cc.TLS = tc
	} else if hasHTTPS(endpoints) {
		cc.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return cc, nil
}

func hasHTTPS(endpoints []string) bool {
	for _, e := range endpoints {
		if strings.HasPrefix(e, "https://") {
			return true
		}
	}
	return false
}

// New connects to all endpoints (for commands that may use any member) and checks, within
// the dial timeout, that etcd answers.
func New(ctx context.Context, c Config) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints: set --endpoints (or ETCDCTL_ENDPOINTS)")
	}
	cli, _, err := connect(ctx, c, c.Endpoints)
	return cli, err
}

// FirstHealthy returns a client bound to the first endpoint, in the order given, that
// answers a status request and may be snapshotted (see SnapshotSource): a snapshot must
// come from one chosen member.
func FirstHealthy(ctx context.Context, c Config) (*clientv3.Client, string, *clientv3.StatusResponse, error) {
	if len(c.Endpoints) == 0 {
		return nil, "", nil, errors.New("no etcd endpoints: set --endpoints (or ETCDCTL_ENDPOINTS)")
	}
	var problems []string
	for _, ep := range c.Endpoints {
		cli, st, err := connect(ctx, c, []string{ep})
		if err == nil {
			if err = SnapshotSource(ep, st); err == nil {
				return cli, ep, st, nil
			}
			cli.Close()
		}
		if ctx.Err() != nil {
			return nil, "", nil, ctx.Err()
		}
		problems = append(problems, err.Error())
	}
	return nil, "", nil, fmt.Errorf("no healthy etcd endpoint: %s", strings.Join(problems, "; "))
}

// SnapshotSource refuses a member whose data may be behind the cluster's: one without a
// leader (partitioned, or its quorum is gone) and a learner (it may still be catching up).
func SnapshotSource(ep string, st *clientv3.StatusResponse) error {
	switch {
	case st.IsLearner:
		return fmt.Errorf("etcd member %x at %s is a learner and may lag behind: snapshot a voting member (list one in --endpoints)", st.Header.MemberId, ep)
	case st.Leader == 0:
		return fmt.Errorf("etcd member %x at %s has no leader (partitioned, or its quorum is down), so its data may be stale: snapshot a member that has one (list it in --endpoints)", st.Header.MemberId, ep)
	}
	return nil
}

// connect dials endpoints and asks the first for its status, so that an unreachable
// member, bad TLS or bad credentials fail now, with the endpoint named.
func connect(ctx context.Context, c Config, endpoints []string) (*clientv3.Client, *clientv3.StatusResponse, error) {
	cc, err := c.clientConfig(endpoints)
	if err != nil {
		return nil, nil, err
	}
	ep := endpoints[0]
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, nil, describe(ep, cc, c.DialTimeout, err)
	}
	sctx, cancel := context.WithTimeout(ctx, c.DialTimeout)
	defer cancel()
	st, err := cli.Status(sctx, ep)
	if err != nil {
		cli.Close()
		return nil, nil, describe(ep, cc, c.DialTimeout, err)
	}
	return cli, st, nil
}

// describe turns a client error into one line that says what to do. It never includes
// the password.
func describe(ep string, cc clientv3.Config, timeout time.Duration, err error) error {
	msg, user := err.Error(), cc.Username
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed) || strings.Contains(msg, "authentication failed"):
		return fmt.Errorf("etcd %s refused the credentials of user %q: check --user and --password (or ETCDCTL_USER/ETCDCTL_PASSWORD): %w", ep, user, err)
	case errors.Is(err, rpctypes.ErrUserEmpty) || strings.Contains(msg, "user name is empty"):
		return fmt.Errorf("etcd %s requires authentication: set --user and --password (or ETCDCTL_USER/ETCDCTL_PASSWORD): %w", ep, err)
	case strings.Contains(msg, "certificate") || strings.Contains(msg, "tls:") || strings.Contains(msg, "x509"):
		return fmt.Errorf("etcd %s: TLS handshake failed: check --cacert, --cert and --key: %w", ep, err)
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "context deadline exceeded"):
		return fmt.Errorf("etcd %s unreachable within %s: %s", ep, timeout, probe(ep, cc.TLS, timeout))
	}
	return fmt.Errorf("etcd %s: %w", ep, err)
}

// probe says why an endpoint does not answer (connection refused, a TLS problem, ...),
// which grpc's deadline error hides.
func probe(ep string, tlsCfg *tls.Config, timeout time.Duration) string {
	host := ep
	if u, err := url.Parse(ep); err == nil && u.Host != "" {
		host = u.Host
	}
	conn, err := net.DialTimeout("tcp", host, timeout)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err
		}
		return err.Error() + ": check --endpoints and that etcd is running"
	}
	defer conn.Close()
	if tlsCfg == nil {
		return "it accepts connections but does not answer etcd requests; if it serves TLS, use https:// endpoints with --cacert, --cert and --key"
	}
	cfg := tlsCfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(host)
	}
	tc := tls.Client(conn, cfg)
	tc.SetDeadline(time.Now().Add(timeout))
	err = tc.Handshake()
	if err == nil {
		// With TLS 1.3 the server refuses a missing client certificate after the
		// handshake, so read briefly to receive that alert.
		tc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err = tc.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = nil
		}
	}
	if err != nil {
		return "TLS handshake failed (" + err.Error() + "): check --cacert, --cert and --key"
	}
	return "TLS works but it does not answer etcd requests: check that it is an etcd client URL"
}
