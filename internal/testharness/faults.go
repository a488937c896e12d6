package testharness

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is a way an S3 request can go wrong, injected by a FaultProxy.
type Fault string

const (
	// Fault500 answers 500 InternalError with S3's XML error body.
	Fault500 Fault = "500"
	// FaultSlowDown answers 503 SlowDown, what AWS sends under load and documents as normal.
	FaultSlowDown Fault = "503-slowdown"
	// FaultReset closes the connection with a TCP RST instead of answering.
	FaultReset Fault = "reset"
	// FaultLatency waits FaultRule.Latency, then forwards the request normally.
	FaultLatency Fault = "latency"
	// FaultTruncate forwards, then sends the status, the headers with the full
	// Content-Length and only half of the body before closing the connection.
	// A response with no body gets FaultReset after forwarding instead.
	FaultTruncate Fault = "truncate"
	// FaultStall never answers: the request hangs until the client gives up or the
	// proxy closes.
	FaultStall Fault = "stall"
)

// AllFaults lists every Fault, for rules that inject any of them.
var AllFaults = []Fault{Fault500, FaultSlowDown, FaultReset, FaultLatency, FaultTruncate, FaultStall}

// S3Op is the S3 operation of a request, as the proxy classifies it from the method,
// the path (path-style: /bucket/key) and the query.
type S3Op string

const (
	OpGetObject               S3Op = "GetObject"
	OpHeadObject              S3Op = "HeadObject"
	OpPutObject               S3Op = "PutObject"
	OpCreateMultipartUpload   S3Op = "CreateMultipartUpload"
	OpUploadPart              S3Op = "UploadPart"
	OpCompleteMultipartUpload S3Op = "CompleteMultipartUpload"
	OpAbortMultipartUpload    S3Op = "AbortMultipartUpload"
	OpListParts               S3Op = "ListParts"
	OpListObjects             S3Op = "ListObjects"
	OpListMultipartUploads    S3Op = "ListMultipartUploads"
	OpDeleteObject            S3Op = "DeleteObject"
	OpDeleteObjects           S3Op = "DeleteObjects"
	// OpOther is everything else: bucket operations, tagging, retention, ACLs…
	OpOther S3Op = "Other"
)

// Phase says when a fault that can happen on either side of the upstream call happens.
type Phase int

const (
	// PhaseRandom picks before or after at random for each injection (the default).
	PhaseRandom Phase = iota
	// PhaseBefore injects without forwarding: the server never sees the request.
	PhaseBefore
	// PhaseAfter forwards first: the server did the work, the client gets the fault
	// anyway. This is what catches a retry of a request that is not idempotent.
	PhaseAfter
)

func (p Phase) String() string {
	switch p {
	case PhaseBefore:
		return "before"
	case PhaseAfter:
		return "after"
	}
	return "random"
}

// FaultRule says which requests get which faults. A request gets the fault of the
// first rule that fires for it.
type FaultRule struct {
	Ops    []S3Op  // empty: every operation
	Faults []Fault // picked at random among these for each injected request; empty: AllFaults
	Rate   float64 // probability per matching request (0..1)
	Nth    int     // or: inject on the Nth matching request only (1-based), once
	// Latency is FaultLatency's delay (default 2s).
	Latency time.Duration
	// Phase fixes when 500, 503, reset and stall happen relative to forwarding
	// (default: at random). Latency is always before, truncate always after.
	Phase Phase
}

// Injection is one fault the proxy injected.
type Injection struct {
	Op     S3Op
	Fault  Fault
	Method string
	Path   string
	// Forwarded says the upstream server saw (and answered) the request.
	Forwarded bool
}

// FaultProxy is an HTTP proxy in front of an S3 server that injects faults per S3
// operation. Requests are forwarded unchanged (same Host header, so SigV4
// signatures still verify) and bodies are streamed both ways.
//
// Note for tests of retries: Go's http.Transport itself resends a GET or HEAD once
// when a reused connection breaks before any byte of the answer (a reset before
// forwarding), so some resets never reach the SDK; that is what a Go client does
// against a real server too.
type FaultProxy struct {
	t        testing.TB
	upstream *S3Server
	target   *url.URL
	endpoint string
	srv      *http.Server
	tr       *http.Transport
	done     chan struct{} // closed when the proxy closes: stalls end
	handlers sync.WaitGroup
	active   atomic.Int32 // requests being handled

	mu         sync.Mutex
	rng        *rand.Rand
	rules      []FaultRule
	matched    []int // per rule: matching requests so far (for Nth)
	requests   int
	ops        map[S3Op]int
	injections []Injection
}

// StartS3FaultProxy starts a fault proxy in front of upstream, with no faults until
// Set. seed drives every random choice (which requests, which fault, before or after);
// it is logged so a failing run can be replayed. The proxy closes when the test ends,
// ending stalled requests.
//
// An HTTPS upstream is reached over TLS with its CACert; the proxy itself serves
// plain HTTP, so Server().CACert is empty.
func StartS3FaultProxy(t testing.TB, upstream *S3Server, seed int64) *FaultProxy {
	t.Helper()
	t.Logf("S3 fault proxy in front of %s: seed %d", upstream.Endpoint, seed)
	target, err := url.Parse(upstream.Endpoint)
	if err != nil {
		t.Fatalf("fault proxy: upstream endpoint %q: %v", upstream.Endpoint, err)
	}
	tr := &http.Transport{
		Proxy:               nil, // never an HTTP_PROXY from the environment
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     30 * time.Second,
		// The client asked for what it asked for: no transparent gzip in between.
		DisableCompression: true,
	}
	if upstream.CACert != "" {
		pem, err := os.ReadFile(upstream.CACert)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &FaultProxy{
		t: t, upstream: upstream, target: target, tr: tr,
		endpoint: "http://" + l.Addr().String(),
		done:     make(chan struct{}),
		rng:      rand.New(rand.NewSource(seed)),
		ops:      map[S3Op]int{},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: time.Minute, ErrorLog: nil}
	go p.srv.Serve(l)
	t.Cleanup(p.close)
	return p
}

func (p *FaultProxy) close() {
	close(p.done)
	p.srv.Close() // listener and every connection the server still owns
	waited := make(chan struct{})
	go func() { p.handlers.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		p.t.Errorf("fault proxy: %d requests still being handled 10s after close", p.active.Load())
	}
	p.tr.CloseIdleConnections()
}

// Server returns a copy of the upstream server whose Endpoint is the proxy: its
// Options, URL, Env and Client all go through the faults.
func (p *FaultProxy) Server() *S3Server {
	s := *p.upstream
	s.Endpoint = p.endpoint
	s.CACert = ""
	return &s
}

// Set replaces the rules (and restarts their Nth counts); Set() injects nothing.
// It is safe while requests run.
func (p *FaultProxy) Set(rules ...FaultRule) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append([]FaultRule(nil), rules...)
	p.matched = make([]int, len(rules))
}

// Injected returns how many times each fault was injected so far.
func (p *FaultProxy) Injected() map[Fault]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := map[Fault]int{}
	for _, in := range p.injections {
		m[in.Fault]++
	}
	return m
}

// InjectedByOp returns how many times each fault was injected into each operation.
func (p *FaultProxy) InjectedByOp() map[S3Op]map[Fault]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := map[S3Op]map[Fault]int{}
	for _, in := range p.injections {
		if m[in.Op] == nil {
			m[in.Op] = map[Fault]int{}
		}
		m[in.Op][in.Fault]++
	}
	return m
}

// InjectedTotal returns how many faults were injected so far.
func (p *FaultProxy) InjectedTotal() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.injections)
}

// Injections returns every injection so far, in order.
func (p *FaultProxy) Injections() []Injection {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Injection(nil), p.injections...)
}

// Requests returns how many requests reached the proxy.
func (p *FaultProxy) Requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests
}

// Ops returns how many requests of each operation reached the proxy.
func (p *FaultProxy) Ops() map[S3Op]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.ops)
}

// ClassifyS3 names the S3 operation of a path-style request.
func ClassifyS3(method, path string, query url.Values) S3Op {
	path = strings.TrimPrefix(path, "/")
	if path == "" {
		return OpOther // ListBuckets
	}
	_, key, _ := strings.Cut(path, "/")
	has := func(k string) bool { _, ok := query[k]; return ok }
	// Sub-resources of objects and buckets that are not the operations we name.
	for _, k := range []string{"tagging", "acl", "retention", "legal-hold", "versioning", "location", "policy",
		"object-lock", "lifecycle", "cors", "encryption", "attributes", "versions", "restore", "select"} {
		if has(k) {
			return OpOther
		}
	}
	if key == "" {
		switch {
		case method == http.MethodGet && has("uploads"):
			return OpListMultipartUploads
		case method == http.MethodGet:
			return OpListObjects
		case method == http.MethodPost && has("delete"):
			return OpDeleteObjects
		}
		return OpOther // CreateBucket, HeadBucket, DeleteBucket
	}
	switch method {
	case http.MethodGet:
		if has("uploadId") {
			return OpListParts
		}
		return OpGetObject
	case http.MethodHead:
		return OpHeadObject
	case http.MethodPut:
		if has("uploadId") && has("partNumber") {
			return OpUploadPart
		}
		return OpPutObject
	case http.MethodPost:
		if has("uploads") {
			return OpCreateMultipartUpload
		}
		if has("uploadId") {
			return OpCompleteMultipartUpload
		}
	case http.MethodDelete:
		if has("uploadId") {
			return OpAbortMultipartUpload
		}
		return OpDeleteObject
	}
	return OpOther
}

// decide counts the request and picks its fault, if any, under the lock.
func (p *FaultProxy) decide(op S3Op) (f Fault, rule FaultRule, after bool, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	p.ops[op]++
	for i, r := range p.rules {
		if len(r.Ops) > 0 && !containsOp(r.Ops, op) {
			continue
		}
		p.matched[i]++
		fire := false
		if r.Nth > 0 {
			fire = p.matched[i] == r.Nth
		} else if r.Rate > 0 {
			fire = p.rng.Float64() < r.Rate
		}
		if !fire {
			continue
		}
		faults := r.Faults
		if len(faults) == 0 {
			faults = AllFaults
		}
		f = faults[p.rng.Intn(len(faults))]
		switch r.Phase {
		case PhaseBefore:
			after = false
		case PhaseAfter:
			after = true
		default:
			after = p.rng.Intn(2) == 1
		}
		switch f {
		case FaultLatency:
			after = false
		case FaultTruncate:
			after = true
		}
		return f, r, after, true
	}
	return "", FaultRule{}, false, false
}

func containsOp(ops []S3Op, op S3Op) bool {
	for _, o := range ops {
		if o == op {
			return true
		}
	}
	return false
}

func (p *FaultProxy) record(in Injection) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.injections = append(p.injections, in)
}

func (p *FaultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.handlers.Add(1)
	p.active.Add(1)
	defer p.handlers.Done()
	defer p.active.Add(-1)

	op := ClassifyS3(r.Method, r.URL.Path, r.URL.Query())
	f, rule, after, ok := p.decide(op)
	if !ok {
		p.forward(w, r)
		return
	}
	in := Injection{Op: op, Fault: f, Method: r.Method, Path: r.URL.Path, Forwarded: after}
	p.record(in)

	var resp *http.Response
	if after {
		var err error
		if resp, err = p.roundTrip(r); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if f != FaultTruncate {
			// The server did the whole request; only the client misses the answer.
			io.Copy(io.Discard, resp.Body)
		}
	}
	if !after && (f == Fault500 || f == FaultSlowDown) {
		// Read the request as S3 would before answering, so the client gets the
		// error rather than a broken pipe while it still sends a part.
		io.Copy(io.Discard, r.Body)
	}
	switch f {
	case Fault500:
		writeS3Error(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
	case FaultSlowDown:
		writeS3Error(w, r, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
	case FaultReset:
		resetConn(w)
	case FaultLatency:
		d := rule.Latency
		if d <= 0 {
			d = 2 * time.Second
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		case <-p.done:
			resetConn(w)
			return
		}
		p.forward(w, r)
	case FaultTruncate:
		p.truncate(w, resp)
	case FaultStall:
		if !after {
			// The server notices a client that hung up only once the request body is
			// read; drain it so a client's deadline ends the stall here too.
			io.Copy(io.Discard, r.Body)
		}
		select {
		case <-r.Context().Done():
		case <-p.done:
			resetConn(w)
		}
	}
}

// roundTrip sends r upstream unchanged: same method, path, query, headers (Host
// included, which SigV4 signs) and a streamed body.
func (p *FaultProxy) roundTrip(r *http.Request) (*http.Response, error) {
	u := *p.target
	u.Path, u.RawPath, u.RawQuery = r.URL.Path, r.URL.RawPath, r.URL.RawQuery
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("fault proxy: request for %s: %w", r.URL, err)
	}
	out.URL = &u
	out.Host = r.Host
	out.Header = r.Header.Clone()
	for _, h := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Upgrade", "Transfer-Encoding",
		// Not signed (the SDK's signer ignores it); our transport sends the body at once.
		"Expect"} {
		out.Header.Del(h)
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = nil // Go would add its own
	}
	out.ContentLength = r.ContentLength
	out.TransferEncoding = r.TransferEncoding
	out.Trailer = r.Trailer // filled in as the body is read, sent after it
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		out.Body = r.Body
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		return nil, fmt.Errorf("fault proxy: %s %s upstream: %w", r.Method, r.URL, err)
	}
	return resp, nil
}

func (p *FaultProxy) forward(w http.ResponseWriter, r *http.Request) {
	resp, err := p.roundTrip(r)
	if err != nil {
		if r.Context().Err() == nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
		}
		return
	}
	defer resp.Body.Close()
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // no sniffing: send what the server sent
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	buf := make([]byte, 32<<10)
	rc := http.NewResponseController(w)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			rc.Flush()
		}
		if rerr == io.EOF {
			return
		}
		if rerr != nil {
			// The body broke upstream: the client must not take what it got for
			// the whole of it.
			resetConn(w)
			return
		}
	}
}

// truncate sends resp's status and headers with its full Content-Length but only half
// its body, then closes the connection.
func (p *FaultProxy) truncate(w http.ResponseWriter, resp *http.Response) {
	body := resp.Body
	length := resp.ContentLength
	if length < 0 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			resetConn(w)
			return
		}
		length, body = int64(len(b)), io.NopCloser(strings.NewReader(string(b)))
	}
	if length == 0 || resp.Request.Method == http.MethodHead {
		io.Copy(io.Discard, resp.Body)
		resetConn(w)
		return
	}
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	h := resp.Header.Clone()
	h.Del("Content-Length")
	h.Del("Transfer-Encoding")
	h.Del("Connection")
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", resp.StatusCode, http.StatusText(resp.StatusCode))
	h.Write(bw)
	fmt.Fprintf(bw, "Content-Length: %d\r\nConnection: close\r\n\r\n", length)
	io.CopyN(bw, body, length/2)
	bw.Flush()
}

// resetConn takes the connection from the server and closes it with a TCP RST
// (linger 0), as a crashed server or a middlebox would.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

func writeS3Error(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	reqID := fmt.Sprintf("%016X", rand.Uint64())
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("x-amz-request-id", reqID)
	if status == http.StatusServiceUnavailable {
		// What AWS sends with SlowDown; the SDK's retryer does not depend on it.
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return // HEAD answers carry no body, S3's errors included
	}
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource><RequestId>%s</RequestId><HostId>fault-proxy</HostId></Error>`,
		code, msg, xmlEscape(r.URL.Path), reqID)
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}

// TCPProxy forwards TCP connections to an upstream address (etcd's client port) and
// can stall or cut them. TLS passes through untouched.
type TCPProxy struct {
	t        testing.TB
	upstream string
	l        net.Listener
	wg       sync.WaitGroup
	done     chan struct{}

	mu    sync.Mutex
	gate  chan struct{} // closed while forwarding; open (blocking) while stalled
	conns map[*tcpPair]struct{}
	cuts  int
}

type tcpPair struct {
	client, server net.Conn
	closed         chan struct{}
	once           sync.Once
}

func (c *tcpPair) close() {
	c.once.Do(func() {
		close(c.closed)
		c.client.Close()
		c.server.Close()
	})
}

// StartTCPProxy starts a TCP proxy on loopback in front of upstreamAddr (host:port, or a
// URL whose host:port is taken), closed when the test ends.
func StartTCPProxy(t testing.TB, upstreamAddr string) *TCPProxy {
	t.Helper()
	if u, err := url.Parse(upstreamAddr); err == nil && u.Host != "" {
		upstreamAddr = u.Host
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := make(chan struct{})
	close(open)
	p := &TCPProxy{t: t, upstream: upstreamAddr, l: l, done: make(chan struct{}), gate: open, conns: map[*tcpPair]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr returns the proxy's host:port.
func (p *TCPProxy) Addr() string { return p.l.Addr().String() }

// Endpoint returns scheme://host:port of the proxy ("http" or "https" for etcd).
func (p *TCPProxy) Endpoint(scheme string) string { return scheme + "://" + p.Addr() }

// Stall stops forwarding bytes both ways; connections stay open and new ones are
// accepted (and stall too) until Resume.
func (p *TCPProxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // already stalled
	}
}

// Resume forwards again after Stall.
func (p *TCPProxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// Cut closes every connection; new ones are still accepted.
func (p *TCPProxy) Cut() {
	p.mu.Lock()
	conns := make([]*tcpPair, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.cuts += len(conns)
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Conns returns how many connections are open through the proxy.
func (p *TCPProxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *TCPProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		s, err := net.DialTimeout("tcp", p.upstream, 10*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		pair := &tcpPair{client: c, server: s, closed: make(chan struct{})}
		p.mu.Lock()
		select {
		case <-p.done:
			p.mu.Unlock()
			pair.close()
			return
		default:
		}
		p.conns[pair] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pair, c, s)
		go p.pipe(pair, s, c)
	}
}

// pipe copies src to dst, holding each chunk while the proxy is stalled.
func (p *TCPProxy) pipe(pair *tcpPair, dst, src net.Conn) {
	defer p.wg.Done()
	defer func() {
		pair.close()
		p.mu.Lock()
		delete(p.conns, pair)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			select {
			case <-gate:
			case <-pair.closed:
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *TCPProxy) close() {
	p.mu.Lock()
	close(p.done)
	p.mu.Unlock()
	p.l.Close()
	p.Cut()
	waited := make(chan struct{})
	go func() { p.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		p.t.Errorf("tcp proxy: connections still open 10s after close")
	}
}

// FaultSeed returns the seed for a randomized fault test: ETCDGUARD_FAULT_SEED when set
// (to replay a run), else the clock.
func FaultSeed(t testing.TB) int64 {
	t.Helper()
	if s := os.Getenv("ETCDGUARD_FAULT_SEED"); s != "" {
		var seed int64
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("ETCDGUARD_FAULT_SEED=%q: %v", s, err)
		}
		return seed
	}
	return time.Now().UnixNano()
}
