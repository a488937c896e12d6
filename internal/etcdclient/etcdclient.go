// Package etcdclient turns etcdguard's etcd flags (the same names and meaning as
// etcdctl's) into clients, and picks the member a snapshot is taken from.
package etcdclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
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
	// InsecureSkipTLSVerify accepts any server certificate (etcdctl's
	// --insecure-skip-tls-verify). Only an explicit flag sets it.
	InsecureSkipTLSVerify bool
}

// keepAliveTime is how long a connection may be silent before it is pinged: grpc's minimum.
const keepAliveTime = 10 * time.Second

// ErrUnreachable means no etcd endpoint answered: refused, timed out, or not etcd. A TLS
// or credentials problem is not it: etcd answered and refused.
var ErrUnreachable = errors.New("etcd unreachable")

// unreachable marks err as ErrUnreachable without adding to its message.
type unreachable struct{ error }

func (u unreachable) Unwrap() []error { return []error{u.error, ErrUnreachable} }

func (c Config) clientConfig(endpoints []string) (clientv3.Config, error) {
	cc := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: c.DialTimeout,
		Logger:      zap.NewNop(), // the client's retry warnings would drown our own messages
	}
	if c.CommandTimeout > 0 {
		// A member that stalls (a stopped process, a hung host, a path that drops packets
		// without a reset) keeps its connection open and answers nothing: without pings, a
		// request or stream in flight on it would wait forever. A connection whose ping is
		// not answered within --command-timeout is closed, failing what was in flight on it
		// (grpc pings no more often than every 10 s; etcd accepts one every 5 s).
		cc.DialKeepAliveTime, cc.DialKeepAliveTimeout = keepAliveTime, c.CommandTimeout
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
		tlsInfo := transport.TLSInfo{TrustedCAFile: c.CACert, CertFile: c.Cert, KeyFile: c.Key, InsecureSkipVerify: c.InsecureSkipTLSVerify}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return cc, fmt.Errorf("loading TLS files (--cacert %q, --cert %q, --key %q): %w", c.CACert, c.Cert, c.Key, err)
		}
		cc.TLS = tc
	} else if hasHTTPS(endpoints) || c.InsecureSkipTLSVerify {
		cc.TLS = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipTLSVerify}
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
// the dial timeout, that etcd answers: the first endpoint that does will do, so one member
// down or hung (the first listed, say) never stops a command while a quorum is up. A hung
// member can look like a TLS failure (its handshake times out), so every endpoint is tried
// whatever the error. Only when none answers at all is the error ErrUnreachable; otherwise
// the first refusal (TLS, credentials) is returned, which says what to fix.
func New(ctx context.Context, c Config) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints: set --endpoints (or ETCDCTL_ENDPOINTS)")
	}
	var errs []error
	for i := range c.Endpoints {
		// This endpoint first: connect asks the first for its status.
		order := append(slices.Clone(c.Endpoints[i:]), c.Endpoints[:i]...)
		cli, _, err := connect(ctx, c, order)
		if err == nil {
			return cli, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	if i := slices.IndexFunc(errs, func(err error) bool { return !errors.Is(err, ErrUnreachable) }); i >= 0 {
		return nil, errs[i]
	}
	var problems []string
	for _, err := range errs {
		problems = append(problems, err.Error())
	}
	return nil, unreachable{fmt.Errorf("no etcd endpoint answered: %s", strings.Join(problems, "; "))}
}

// FirstHealthy returns a client bound to the first endpoint, in the order given, that
// answers a status request and may be snapshotted (see SnapshotSource): a snapshot must
// come from one chosen member.
func FirstHealthy(ctx context.Context, c Config) (*clientv3.Client, string, *clientv3.StatusResponse, error) {
	if len(c.Endpoints) == 0 {
		return nil, "", nil, errors.New("no etcd endpoints: set --endpoints (or ETCDCTL_ENDPOINTS)")
	}
	var problems []string
	allUnreachable := true
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
		allUnreachable = allUnreachable && errors.Is(err, ErrUnreachable)
	}
	err := fmt.Errorf("no healthy etcd endpoint: %s", strings.Join(problems, "; "))
	if allUnreachable {
		return nil, "", nil, unreachable{err}
	}
	return nil, "", nil, err
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
		return fmt.Errorf("etcd %s: TLS handshake failed: %s: %w", ep, tlsHint(msg), err)
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "context deadline exceeded"):
		why, reached := probe(ep, cc.TLS, timeout)
		if !reached {
			return unreachable{fmt.Errorf("etcd %s unreachable within %s: %s", ep, timeout, why)}
		}
		return fmt.Errorf("etcd %s: %s", ep, why)
	}
	return fmt.Errorf("etcd %s: %w", ep, err)
}

// tlsHint says which flag fixes a TLS failure. A server certificate of an unknown CA is
// what a missing --cacert gives; skipping verification is named, never assumed.
func tlsHint(msg string) string {
	switch {
	case strings.Contains(msg, "remote error: tls: unknown certificate authority") || strings.Contains(msg, "remote error: tls: bad certificate"):
		return "etcd does not accept the client certificate: give --cert and --key signed by the CA etcd trusts (its --trusted-ca-file; kubeadm: " +
			"/etc/kubernetes/pki/etcd/healthcheck-client.crt and .key)"
	case strings.Contains(msg, "unknown authority"):
		return "etcd's certificate is not signed by the CA in --cacert (without --cacert: by a system CA): give the CA that signed it with --cacert " +
			"(kubeadm: /etc/kubernetes/pki/etcd/ca.crt), or skip verification with --insecure-skip-tls-verify (anyone in the path can then read and change what etcdguard reads and writes)"
	}
	return "check --cacert, --cert and --key"
}

// probe says why an endpoint does not answer (connection refused, a TLS problem, ...),
// which grpc's deadline error hides. reached reports whether something answered the TLS
// handshake (it refused us, so etcd is there); otherwise the endpoint is unreachable.
func probe(ep string, tlsCfg *tls.Config, timeout time.Duration) (why string, reached bool) {
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
		return err.Error() + ": check --endpoints and that etcd is running", false
	}
	defer conn.Close()
	if tlsCfg == nil {
		return "it accepts connections but does not answer etcd requests; if it serves TLS, use https:// endpoints with --cacert, --cert and --key", false
	}
	cfg := tlsCfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(host)
	}
	tc := tls.Client(conn, cfg)
	tc.SetDeadline(time.Now().Add(timeout))
	err = tc.Handshake()
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		// Accepted and never answered: a hung member (or not a server at all), not a
		// certificate problem.
		return "it accepts connections but does not answer (hung, or overloaded): check that etcd is running and healthy there", false
	}
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
		return "TLS handshake failed (" + err.Error() + "): " + tlsHint(err.Error()), true
	}
	return "TLS works but it does not answer etcd requests: check that it is an etcd client URL", false
}

// UserName is the etcd user c acts as: --user's name, else, with a client certificate and
// no password, the certificate's CN (etcd's user under --client-cert-auth), else "".
func (c Config) UserName() string {
	name, how := c.identity()
	if how == "" {
		return ""
	}
	return name
}

// identity is UserName and how etcd learns it, for messages.
func (c Config) identity() (name, how string) {
	if c.User != "" {
		name, _, _ := strings.Cut(c.User, ":")
		return name, "--user"
	}
	if c.Cert == "" {
		return "", ""
	}
	b, err := os.ReadFile(c.Cert)
	if err != nil {
		return "", ""
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", ""
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", ""
	}
	return cert.Subject.CommonName, "the CN of --cert"
}

// PermissionDenied reports whether etcd refused a request for lack of permission. A
// snapshot stream's error arrives as a bare grpc status, so the message is compared too.
func PermissionDenied(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCPermissionDenied) ||
		strings.Contains(err.Error(), rpctypes.ErrPermissionDenied.Error()))
}

// Denied explains a permission error of etcd's: whom etcd refused what, and the grant it
// takes (need). A client certificate whose CN is no etcd user gets past the TLS handshake
// and fails at the first request that checks permissions, so that is said too. Other
// errors pass unchanged.
func (c Config) Denied(err error, what, need string) error {
	name, how := c.identity()
	who := "the client (no --user, no client certificate)"
	if how != "" {
		who = fmt.Sprintf("etcd user %q (%s)", name, how)
	}
	switch {
	case PermissionDenied(err):
		return fmt.Errorf("etcd refused %s: %s lacks the permission: %s: %w", what, who, need, err)
	case err != nil && (errors.Is(err, rpctypes.ErrUserNotFound) || strings.Contains(err.Error(), rpctypes.ErrUserNotFound.Error())):
		return fmt.Errorf("etcd refused %s: %s does not exist in etcd: add it (etcdctl user add %s --no-password) and grant it a role, or give --user: %w",
			what, who, name, err)
	}
	return err
}

// closeWait bounds Close.
const closeWait = 5 * time.Second

// Close closes a client that ran watches, giving up after closeWait. etcd's client can
// deadlock in Close when a watch stream shuts down while one of its substreams is still
// handing back its close (watch.go: the substream's send on closingc, after run's deferred
// clean-up counted what it would read): seen in CI as `snapshot save`, refused by etcd for
// a user without the root role, hanging 20 minutes after it had its answer. A command that
// has its result must not hang on that; what is left ends with the process.
func Close(cli *clientv3.Client) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		cli.Close()
	}()
	select {
	case <-done:
	case <-time.After(closeWait):
		slog.Debug("etcd client did not close in time; left to the process's exit", "after", closeWait)
	}
}
