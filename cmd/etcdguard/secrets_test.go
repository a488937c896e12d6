package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"filippo.io/age"
	"filippo.io/age/armor"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/klauspost/compress/zstd"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// secret is a value etcdguard is handed and must never show. forms are the ways it could
// appear in bytes: as given, base64, hex, and the first 16 characters of each that carry
// the secret, for a truncated leak. They are matched in any case: an age identity, a hex
// key or a token keeps its meaning when a log or a library lowercases or uppercases it.
type secret struct {
	name  string
	forms []secretForm
}

type secretForm struct {
	label string
	exact []byte // to say whether a match is the form as is or in another case
	lower []byte // what is searched for, in a lowercased copy of the bytes
}

// newSecret makes a secret of value, whose first len(public) bytes are no secret (a URL's
// scheme, host and path, a key's type), so that its truncated forms are cut from what
// follows them: a 16-character prefix "AGE-SECRET-KEY-1" or "https://127.0.0." would match
// where no secret is and tell nothing.
func newSecret(name, public string, value []byte) secret {
	if !bytes.HasPrefix(value, []byte(public)) {
		panic(fmt.Sprintf("secret %s does not start with %q", name, public))
	}
	p := len(public)
	s := secret{name: name}
	seen := map[string]bool{}
	add := func(label string, f []byte) {
		l := asciiLower(f)
		if seen[string(l)] {
			return
		}
		seen[string(l)] = true
		s.forms = append(s.forms, secretForm{label: label, exact: f, lower: l})
	}
	// Where each encoding's characters start to depend only on the secret part.
	type enc struct {
		label string
		text  []byte
		off   int
	}
	b64off := (p + 2) / 3 * 4
	encs := []enc{
		{"as given", value, p},
		{"base64", []byte(base64.StdEncoding.EncodeToString(value)), b64off},
		{"base64url", []byte(base64.RawURLEncoding.EncodeToString(value)), b64off},
		{"hex", []byte(hex.EncodeToString(value)), 2 * p},
	}
	for _, e := range encs {
		add(e.label, e.text)
	}
	if len(value) > 20 {
		for _, e := range encs {
			if len(e.text)-e.off >= 16 {
				add("first 16 characters of its "+e.label+" form", e.text[e.off:e.off+16])
			}
		}
		// Inside a larger base64 value (an Authorization: Basic header, a config blob) the
		// secret starts 1 or 2 bytes into a 3-byte group, which encodes it otherwise.
		for shift := 1; shift <= 2; shift++ {
			t := base64.StdEncoding.EncodeToString(append(make([]byte, shift), value...))
			if off := (p + shift + 2) / 3 * 4; len(t)-off >= 20 {
				add(fmt.Sprintf("base64, %d bytes into a larger value", shift), []byte(t[off:off+16]))
			}
		}
	}
	return s
}

// asciiLower lowercases ASCII letters only, so binary data keeps its length and offsets
// (bytes.ToLower would turn invalid UTF-8 into U+FFFD).
func asciiLower(b []byte) []byte {
	l := make([]byte, len(b))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		l[i] = c
	}
	return l
}

// secretScanner collects every byte etcdguard produced, by where it came from, and the
// argv of every command, and finds any secret in them. Bytes that are age ciphertext, zstd
// or gzip are scanned as they are and again decrypted or decoded, layer by layer.
type secretScanner struct {
	secrets    []secret
	identities []age.Identity
	mu         sync.Mutex
	leaks      []string
	problems   []string       // content that could not be decrypted or decoded, so was not seen
	layers     map[string]int // how many decryptions and decodings, so a check that never ran fails
	plainEtcd  int            // decrypted or decoded layers holding the test's etcd keys
	scanned    int            // how many sources, so a scan that saw nothing fails
	bytes      int64
}

func (s *secretScanner) scan(where string, b []byte) { s.scanExcept(where, b) }

// scanExcept scans b for every secret but the ones named in except.
func (s *secretScanner) scanExcept(where string, b []byte, except ...string) {
	lower := asciiLower(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scanned++
	s.bytes += int64(len(b))
	for _, sec := range s.secrets {
		if slices.Contains(except, sec.name) {
			continue
		}
		for _, f := range sec.forms {
			i := bytes.Index(lower, f.lower)
			if i < 0 {
				continue
			}
			label := f.label
			if !bytes.Equal(b[i:i+len(f.exact)], f.exact) {
				label += ", in another case"
			}
			lo, hi := max(0, i-60), min(len(b), i+len(f.exact)+20)
			s.leaks = append(s.leaks, fmt.Sprintf("%s: %s (%s): …%q…", where, sec.name, label, b[lo:hi]))
			break
		}
	}
}

// scanDeep scans b, then what it holds once decrypted with the test's identity or
// decompressed, down to the plain bytes. name is the object's key or file's name: a
// layer its suffixes promise (.age, .zst, .gz) that is not found is a problem, since
// then the bytes were never seen in the clear.
func (s *secretScanner) scanDeep(where, name string, b []byte) {
	s.scan(where, b)
	var want []string
	for {
		ext := filepath.Ext(name)
		layer := map[string]string{".age": "age-decrypted", ".zst": "zstd-decoded", ".gz": "gzip-decoded"}[ext]
		if layer == "" {
			break
		}
		want = append(want, layer)
		name = strings.TrimSuffix(name, ext)
	}
	var got []string
	defer func() {
		if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
			s.mu.Lock()
			s.problems = append(s.problems, fmt.Sprintf("%s: layers %v, its name promises %v", where, got, want))
			s.mu.Unlock()
		}
	}()
	for range 4 {
		layer, out, err := s.peel(b)
		if layer == "" {
			return
		}
		got = append(got, layer)
		if err != nil {
			s.mu.Lock()
			s.problems = append(s.problems, fmt.Sprintf("%s: %s: %v", where, layer, err))
			s.mu.Unlock()
			return
		}
		where += " (" + layer + ")"
		s.mu.Lock()
		s.layers[layer]++
		if bytes.Contains(out, []byte("/registry/configmaps/default/cm-")) {
			s.plainEtcd++
		}
		s.mu.Unlock()
		s.scan(where, out)
		b = out
	}
}

var (
	ageHeader   = []byte("age-encryption.org/v1\n")
	ageArmor    = []byte(armor.Header)
	zstdMagic   = []byte{0x28, 0xb5, 0x2f, 0xfd}
	gzipMagic   = []byte{0x1f, 0x8b}
	zstdDecoder = must(zstd.NewReader(nil, zstd.WithDecoderConcurrency(1)))
)

// peel removes one layer of encryption or compression from b, saying which; "" when b is
// neither.
func (s *secretScanner) peel(b []byte) (string, []byte, error) {
	switch {
	case bytes.HasPrefix(b, ageHeader), bytes.HasPrefix(b, ageArmor):
		var r io.Reader = bytes.NewReader(b)
		if bytes.HasPrefix(b, ageArmor) {
			r = armor.NewReader(r)
		}
		dr, err := age.Decrypt(r, s.identities...)
		if err != nil {
			return "age-decrypted", nil, err
		}
		out, err := io.ReadAll(dr)
		return "age-decrypted", out, err
	case bytes.HasPrefix(b, zstdMagic):
		out, err := zstdDecoder.DecodeAll(b, nil)
		return "zstd-decoded", out, err
	case bytes.HasPrefix(b, gzipMagic):
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return "gzip-decoded", nil, err
		}
		out, err := io.ReadAll(zr)
		return "gzip-decoded", out, err
	}
	return "", nil, nil
}

// TestSecretsNeverLeak runs a whole save / verify / check / restore / del / undo / prune /
// daemon cycle, with failures, against auth-enabled etcd and MinIO over TLS with SSE-C and
// a versioned bucket, then a shorter cycle on a file:// store, with known secrets that
// reach etcdguard only through files, the environment and a config file; then it scans
// every byte of output, every version of every stored object and every file the commands
// wrote (decrypted and decompressed too), every alert request, /metrics and every argv
// for them, and checks that nothing etcdguard wrote locally is readable by group or
// others.
func TestSecretsNeverLeak(t *testing.T) {
	start := time.Now()
	srv := testharness.StartMinIOWith(t, testharness.MinIOOptions{TLS: true})
	e := testharness.StartEtcd(t)
	ctx := context.Background()
	// A versioned bucket keeps every object etcdguard overwrote or deleted, so the scan
	// sees those too, not only what is left at the end.
	if _, err := srv.Client(t).PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: &srv.Bucket,
		VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled}}); err != nil {
		t.Fatalf("enabling versioning on bucket %s: %v", srv.Bucket, err)
	}
	for i := range 20 {
		if _, err := e.Client(t).Put(ctx, fmt.Sprintf("/registry/configmaps/default/cm-%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	password := "etcd-pw-" + randHex(10)
	enableAuth(t, e.Client(t), password)

	secretsDir := t.TempDir() // files that hold secrets on purpose; not scanned
	work := t.TempDir()       // HOME, TMPDIR and every output of etcdguard; scanned
	writeSecret := func(name, content string) string {
		p := filepath.Join(secretsDir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	id := must(age.GenerateX25519Identity())
	wrongID := must(age.GenerateX25519Identity())
	sseKey, wrongSSEKey := make([]byte, 32), make([]byte, 32)
	rand.Read(sseKey)
	rand.Read(wrongSSEKey)
	wrongPassword := "etcd-wrongpw-" + randHex(10)
	wrongAWSSecret := randHex(16)
	slackToken, hookToken := "slacktok"+randHex(12), "hooktok"+randHex(12)

	var recvMu sync.Mutex
	received := map[string]int{}
	var requests []alertRequest
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		recvMu.Lock()
		defer recvMu.Unlock()
		req := alertRequest{line: r.Method + " " + r.URL.RequestURI(), header: r.Header.Clone(), body: body, err: err}
		if strings.HasPrefix(r.URL.Path, "/services/") {
			req.receiver = "slack"
			requests = append(requests, req)
			received["slack"]++
			fmt.Fprint(w, "ok")
			return
		}
		// The generic receiver fails, so the daemon's error path runs too.
		req.receiver = "webhook"
		requests = append(requests, req)
		received["webhook"]++
		http.Error(w, "receiver is down", http.StatusInternalServerError)
	}))
	t.Cleanup(receiver.Close)
	slackURL := receiver.URL + "/services/T0ETCDG/B0GUARD/" + slackToken
	hookURL := receiver.URL + "/alert?token=" + hookToken
	// The test writes its secrets nowhere in etcd (the values are "v"; etcd keeps the
	// password only as a bcrypt hash), so a decrypted snapshot or saved copy, which holds
	// etcd's data, can be scanned like any other output.

	slackBase, hookBase := receiver.URL+"/services/T0ETCDG/B0GUARD/", receiver.URL+"/alert?token="
	sc := &secretScanner{identities: []age.Identity{id}, layers: map[string]int{}, secrets: []secret{
		newSecret("etcd password", "etcd-pw-", []byte(password)),
		newSecret("wrong etcd password", "etcd-wrongpw-", []byte(wrongPassword)),
		newSecret("AWS access key id", "etcdguard-", []byte(srv.AccessKey)),
		newSecret("AWS secret key", "", []byte(srv.SecretKey)),
		newSecret("wrong AWS secret key", "", []byte(wrongAWSSecret)),
		newSecret("SSE-C key", "", sseKey),
		newSecret("wrong SSE-C key", "", wrongSSEKey),
		newSecret("age identity", "AGE-SECRET-KEY-1", []byte(id.String())),
		newSecret("wrong age identity", "AGE-SECRET-KEY-1", []byte(wrongID.String())),
		newSecret(slackTokenName, "slacktok", []byte(slackToken)),
		newSecret(hookTokenName, "hooktok", []byte(hookToken)),
		newSecret(slackURLName, slackBase, []byte(slackURL)),
		newSecret(hookURLName, hookBase, []byte(hookURL)),
	}}

	// The scanner itself, on known leaks: every form of every secret, embedded mid-text at
	// each offset and in upper case, must be found; otherwise a pass below proves nothing.
	for _, sec := range sc.secrets {
		for _, f := range sec.forms {
			for pad := range 3 {
				before := len(sc.leaks)
				upper := bytes.Map(func(r rune) rune { // ASCII only: raw key bytes keep their length
					if r >= 'a' && r <= 'z' {
						return r - 'a' + 'A'
					}
					return r
				}, f.exact)
				if !utf8.Valid(f.exact) {
					upper = f.exact
				}
				sc.scan("canary", append([]byte(strings.Repeat("x", 7+pad)+" leaked: "), upper...))
				if !slices.ContainsFunc(sc.leaks[before:], func(l string) bool { return strings.Contains(l, ": "+sec.name+" (") }) {
					t.Fatalf("the scanner misses %s in its %s form: it cannot be trusted", sec.name, f.label)
				}
			}
		}
	}
	sc.leaks, sc.scanned, sc.bytes = nil, 0, 0

	credsFile := writeSecret("aws-credentials", fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", srv.AccessKey, srv.SecretKey))
	wrongCredsFile := writeSecret("aws-credentials-wrong", fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", srv.AccessKey, wrongAWSSecret))
	sseFile := writeSecret("sse-c.key", base64.StdEncoding.EncodeToString(sseKey))
	wrongSSEFile := writeSecret("sse-c-wrong.key", base64.StdEncoding.EncodeToString(wrongSSEKey))
	idFile := writeSecret("identity.txt", "# created by the test\n"+id.String()+"\n")
	wrongIDFile := writeSecret("wrong-identity.txt", wrongID.String()+"\n")
	// The password and the generic webhook come from the config file, the Slack webhook from
	// the environment, everything else from files the flags or variables name.
	cfgFile := writeSecret("etcdguard.yaml", fmt.Sprintf("user: root\npassword: %s\nalert-webhook: [%q]\n", password, hookURL))

	for _, d := range []string{"home", "tmp"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	baseEnv := []string{
		"HOME=" + filepath.Join(work, "home"), "TMPDIR=" + filepath.Join(work, "tmp"),
		"ETCDCTL_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_CLUSTER=prod", "ETCDGUARD_CONFIG=" + cfgFile,
		"ETCDGUARD_IDENTITY_FILE=" + idFile, "ETCDGUARD_ENCRYPT_RECIPIENT=" + id.Recipient().String(),
		"ETCDGUARD_ALERT_SLACK_WEBHOOK=" + slackURL,
	}
	s3Env := append(append([]string{}, baseEnv...),
		"AWS_SHARED_CREDENTIALS_FILE="+credsFile, "AWS_CONFIG_FILE="+filepath.Join(work, "home", "no-aws-config"),
		"AWS_REGION="+srv.Region, "AWS_CA_BUNDLE="+srv.CACert, "AWS_EC2_METADATA_DISABLED=true",
		"ETCDGUARD_S3_ENDPOINT="+srv.Endpoint, "ETCDGUARD_S3_PATH_STYLE=true", "ETCDGUARD_STORE="+srv.URL("sec"),
		"ETCDGUARD_S3_SSE_C_KEY_FILE="+sseFile)
	fileStore := filepath.Join(work, "store")
	fileEnv := append(append([]string{}, baseEnv...), "ETCDGUARD_STORE=file://"+fileStore)
	with := func(env []string, extra ...string) []string { return append(append([]string{}, env...), extra...) }

	var argvs [][]string
	runs := 0
	const fail = -1 // any non-zero exit but a usage error's
	// sr runs etcdguard, scans its argv and all it printed, and checks its exit code.
	sr := func(env []string, wantCode int, args ...string) result {
		t.Helper()
		argvs = append(argvs, args)
		r := run(t, env, args...)
		runs++
		where := fmt.Sprintf("`etcdguard %s`", strings.Join(args, " "))
		sc.scan(where+" stdout", []byte(r.stdout))
		sc.scan(where+" stderr", []byte(r.stderr))
		if (wantCode == 0) != (r.code == 0) || (wantCode > 0 && r.code != wantCode) {
			t.Fatalf("%s: exit %d, want %d\n%s%s", where, r.code, wantCode, r.stdout, r.stderr)
		}
		// A failure case must fail where the secret is used, with its one error line: not
		// on a usage error (exit 2), which would scan output that never met the secret.
		if wantCode == fail { // check's UNKNOWN (3) reports on stdout, Nagios-style
			if r.code == 2 {
				t.Fatalf("%s: a usage error, not the failure this case is about: %s", where, r.stderr)
			}
			r.errorLine(t)
		}
		return r
	}

	cycle := func(name string, env []string, daemon bool) {
		t.Logf("%s cycle", name)
		sr(env, 0, "snapshot", "save", "-o", "json")
		sr(env, 0, "snapshot", "list")
		sr(env, 0, "snapshot", "list", "-o", "json")
		sr(env, 0, "snapshot", "verify", "latest")
		sr(env, 0, "check", "--max-age", "5h")
		sr(env, 0, "check", "--max-age", "5h", "-o", "json")
		restored := filepath.Join(work, name+"-restore", "m1.etcd")
		sr(env, 0, "restore", "--snapshot", "latest", "--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:2380",
			"--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--data-dir", restored)
		// A restore into a member's existing data dir is refused.
		sr(env, fail, "restore", "--snapshot", "latest", "--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:2380",
			"--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--data-dir", restored)
		type planOut struct {
			PlanID string `json:"plan_id"`
		}
		p := decodeJSON[planOut](t, sr(env, 0, "del", "/registry/configmaps/default/cm-0", "--prefix", "--dry-run", "-o", "json"))
		sr(env, 0, "del", "/registry/configmaps/default/cm-0", "--prefix", "--dry-run")
		sr(with(env, "ETCDCTL_PASSWORD="+wrongPassword), fail, "del", "--confirm", p.PlanID)
		sr(env, 0, "del", "--confirm", p.PlanID)
		sr(env, 0, "guard", "plans")
		sr(env, 0, "guard", "plans", "-o", "json")
		sr(with(env, "ETCDCTL_PASSWORD="+wrongPassword), fail, "guard", "undo", p.PlanID)
		sr(env, 0, "guard", "undo", p.PlanID)
		sr(env, 0, "timeline")

		// Failures: wrong etcd password (from the environment, over the config file's),
		// wrong identity, etcd and store unreachable.
		sr(with(env, "ETCDCTL_PASSWORD="+wrongPassword), fail, "snapshot", "save")
		sr(with(env, "ETCDGUARD_PASSWORD="+wrongPassword), fail, "del", "/registry/configmaps/", "--prefix", "--dry-run")
		sr(with(env, "ETCDGUARD_IDENTITY_FILE="+wrongIDFile), fail, "snapshot", "verify", "latest")
		sr(with(env, "ETCDGUARD_IDENTITY_FILE="+wrongIDFile), fail, "restore", "--snapshot", "latest", "--name", "m1",
			"--initial-cluster", "m1=http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
			"--data-dir", filepath.Join(work, name+"-restore-wrong-id", "m1.etcd"))
		dead := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
		sr(with(env, "ETCDCTL_ENDPOINTS="+dead, "ETCDCTL_DIAL_TIMEOUT=1s"), fail, "snapshot", "save")
		if name == "s3" {
			sr(with(env, "ETCDGUARD_S3_ENDPOINT=https://"+dead, "ETCDGUARD_STORE_TIMEOUT=3s"), fail, "snapshot", "list")
			sr(with(env, "ETCDGUARD_S3_ENDPOINT=https://"+dead, "ETCDGUARD_STORE_TIMEOUT=3s"), 3, "check", "--max-age", "5h")
			sr(with(env, "AWS_SHARED_CREDENTIALS_FILE="+wrongCredsFile), fail, "snapshot", "save")
			sr(with(env, "AWS_SHARED_CREDENTIALS_FILE="+wrongCredsFile), fail, "snapshot", "list")
			sr(with(env, "ETCDGUARD_S3_SSE_C_KEY_FILE="+wrongSSEFile), fail, "snapshot", "verify", "latest")
			// Debug logging, where the SDK's and etcd client's own messages go.
			debug := with(env, "ETCDGUARD_LOG_LEVEL=debug")
			sr(debug, 0, "snapshot", "save")
			sr(debug, 0, "snapshot", "verify", "latest")
			sr(with(debug, "AWS_SHARED_CREDENTIALS_FILE="+wrongCredsFile), fail, "snapshot", "save")
			sr(with(debug, "ETCDGUARD_S3_SSE_C_KEY_FILE="+wrongSSEFile), fail, "snapshot", "verify", "latest")
			sr(with(debug, "ETCDCTL_PASSWORD="+wrongPassword), fail, "snapshot", "save")
		} else {
			sr(with(env, "ETCDGUARD_STORE=file://"+filepath.Join(work, "no-such-store")), 2, "check", "--max-age", "5h") // CRITICAL: nothing there
		}
		// Pruning deletes snapshots; the versioned bucket keeps what it deleted.
		prune := []string{"snapshot", "prune", "--keep-last", "1", "--keep-hourly", "0", "--keep-daily", "0", "--keep-weekly", "0"}
		sr(env, 0, append(prune, "--dry-run")...)
		sr(env, 0, prune...)
		if daemon {
			runDaemonScan(t, sc, env, &argvs, received, &recvMu)
		}
	}
	cycle("s3", s3Env, true)
	cycle("file", fileEnv, false)

	// The password as etcdctl's user name:password, from the environment, with a config
	// file that holds none.
	noPwCfg := writeSecret("nopw.yaml", fmt.Sprintf("alert-webhook: [%q]\n", hookURL))
	upEnv := with(fileEnv, "ETCDGUARD_CONFIG="+noPwCfg, "ETCDCTL_USER=root:"+password)
	sr(upEnv, 0, "snapshot", "save")
	type planOut struct {
		PlanID string `json:"plan_id"`
	}
	p := decodeJSON[planOut](t, sr(upEnv, 0, "del", "/registry/configmaps/default/cm-1", "--prefix", "--dry-run", "-o", "json"))
	sr(upEnv, 0, "del", "--confirm", p.PlanID)
	sr(upEnv, 0, "guard", "undo", p.PlanID)
	sr(with(upEnv, "ETCDCTL_USER=root:"+wrongPassword), fail, "snapshot", "save")
	sr(with(upEnv, "ETCDGUARD_USER=root:"+wrongPassword), fail, "del", "/registry/configmaps/", "--prefix", "--dry-run")

	// A daemon that can reach neither etcd (wrong password) nor the store (wrong S3 secret
	// key) logs errors while it retries.
	failDaemonScan(t, sc, with(s3Env, "ETCDCTL_PASSWORD="+wrongPassword, "AWS_SHARED_CREDENTIALS_FILE="+wrongCredsFile), &argvs)

	// Every argv the test passed, as `ps` would show it.
	for _, a := range argvs {
		sc.scan("argv", []byte(strings.Join(a, " ")))
	}
	// Every object in the bucket, read raw (SSE-C objects with their key, as S3 hands
	// them out), and every file of the file:// store and of every dir the commands wrote.
	// The file:// store writes through temp files it renames or removes; a removed one
	// is gone and not scanned (the S3 store's deleted objects are, as versions).
	bs := scanBucket(t, sc, srv, sseKey)
	files, wide := scanTree(t, sc, work)
	if len(wide) > 0 {
		t.Errorf("readable by group or others:\n%s", strings.Join(wide, "\n"))
	}
	recvMu.Lock()
	bodies := scanAlertRequests(t, sc, requests)
	recvMu.Unlock()
	for _, p := range sc.problems {
		t.Error("not scanned: " + p)
	}
	for _, l := range sc.leaks {
		t.Error("leak: " + l)
	}
	if bs.current < 10 || files < 10 || runs < 30 {
		t.Fatalf("the scan saw too little: %d objects, %d files, %d commands", bs.current, files, runs)
	}
	if bs.versions <= bs.current {
		t.Errorf("the versioned bucket kept no old version: %d versions of %d objects, %d delete markers", bs.versions, bs.current, bs.deleteMarkers)
	}
	if bodies["slack"] < 1 || bodies["webhook"] < 1 {
		t.Errorf("alert bodies captured: %v, want at least one from each receiver", bodies)
	}
	if sc.layers["age-decrypted"] < 1 || sc.layers["zstd-decoded"] < 1 || sc.plainEtcd < 1 {
		t.Errorf("the scan decrypted or decoded too little: %v, %d layers with etcd's keys in the clear", sc.layers, sc.plainEtcd)
	}
	t.Logf("scanned %d sources (%d bytes) of %d commands, %d objects (%d versions, %d delete markers, %d open uploads), "+
		"%d files, %d alert requests, layers %v, for %d secrets in %s",
		sc.scanned, sc.bytes, runs, bs.current, bs.versions, bs.deleteMarkers, bs.uploads, files, len(requests), sc.layers,
		len(sc.secrets), time.Since(start).Round(time.Second))
}

// runDaemonScan runs the daemon for a few seconds, alerting to both receivers (the
// snapshots it sees are older than --max-age), scrapes its endpoints and reads its
// process's command line while it runs.
func runDaemonScan(t *testing.T, sc *secretScanner, env []string, argvs *[][]string, received map[string]int, mu *sync.Mutex) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	args := []string{"--schedule", "@every 2s", "--max-age", "1s", "--check-interval", "1s", "--alert-repeat", "1s", "--alert-after-failures", "1"}
	*argvs = append(*argvs, append([]string{"daemon", "--listen", addr}, args...))
	d := startDaemon(t, env, addr, args...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		done := received["slack"] > 0 && received["webhook"] > 1
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon alerted no receiver within 30s: %v", received)
		}
		time.Sleep(200 * time.Millisecond)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	sc.scan("daemon /proc/PID/cmdline", bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
	metrics := scrape(t, "http://"+addr+"/metrics")
	if !strings.Contains(metrics, "etcdguard_") {
		t.Fatalf("/metrics has no etcdguard metric:\n%s", metrics)
	}
	sc.scan("/metrics", []byte(metrics))
	for _, p := range []string{"/healthz", "/readyz"} {
		sc.scan(p, []byte(scrape(t, "http://"+addr+p)))
	}
	d.cmd.Process.Signal(os.Interrupt)
	d.cmd.Wait()
	log, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "receiver is down") && !strings.Contains(string(log), "500") {
		t.Errorf("the daemon logged no failed alert; its log:\n%s", log)
	}
	sc.scan("daemon log", log)
}

// failDaemonScan runs a daemon that fails at everything for a few seconds and scans all it
// logged and served.
func failDaemonScan(t *testing.T, sc *secretScanner, env []string, argvs *[][]string) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	args := []string{"--schedule", "@every 1s", "--check-interval", "1s", "--alert-after-failures", "1"}
	*argvs = append(*argvs, append([]string{"daemon", "--listen", addr}, args...))
	d := startDaemon(t, env, addr, args...)
	exited := make(chan struct{})
	go func() { d.cmd.Wait(); close(exited) }()
	metrics := ""
	least, deadline := time.Now().Add(4*time.Second), time.Now().Add(testharness.Budget(4*time.Second))
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			deadline = time.Now()
			continue
		case <-time.After(500 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			metrics = string(b)
		}
		// After 4s (the whole wait without -race, whose budget is longer), stop once both
		// errors are logged.
		if log, _ := os.ReadFile(d.log); time.Now().After(least) && strings.Contains(string(log), "authentication failed") && strings.Contains(string(log), "access denied") {
			break
		}
	}
	d.cmd.Process.Signal(os.Interrupt)
	<-exited
	log, err := os.ReadFile(d.log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "authentication failed") || !strings.Contains(string(log), "access denied") {
		t.Errorf("the failing daemon logged no etcd authentication error or no store access error:\n%s", log)
	}
	sc.scan("failing daemon log", log)
	sc.scan("failing daemon /metrics", []byte(metrics))
}

// The names of the secrets a receiver sees in its own request line.
const (
	slackTokenName = "Slack webhook token"
	hookTokenName  = "webhook token"
	slackURLName   = "Slack webhook URL"
	hookURLName    = "webhook URL"
)

// alertRequest is one request an alert receiver got, as it came.
type alertRequest struct {
	receiver string
	line     string // method and URL path and query
	header   http.Header
	body     []byte
	err      error
}

// scanAlertRequests scans what the receivers were sent and returns how many non-empty
// bodies each got. A receiver's URL, token and all, is where etcdguard must send to, so
// its request line may hold that receiver's own token and nothing else secret; its
// headers and body may hold none.
func scanAlertRequests(t *testing.T, sc *secretScanner, reqs []alertRequest) map[string]int {
	t.Helper()
	own := map[string][]string{"slack": {slackTokenName, slackURLName}, "webhook": {hookTokenName, hookURLName}}
	bodies := map[string]int{}
	for i, r := range reqs {
		if r.err != nil {
			t.Errorf("reading alert request %d to %s: %v", i, r.receiver, r.err)
		}
		where := fmt.Sprintf("alert request %d to %s", i, r.receiver)
		sc.scanExcept(where+" request line", []byte(r.line), own[r.receiver]...)
		var h []string
		for k, vs := range r.header {
			for _, v := range vs {
				h = append(h, k+": "+v)
			}
		}
		sc.scan(where+" headers", []byte(strings.Join(h, "\n")))
		sc.scanDeep(where+" body", "", r.body)
		if len(r.body) > 0 {
			bodies[r.receiver]++
		}
	}
	return bodies
}

// bucketScan counts what scanBucket saw.
type bucketScan struct {
	current, versions, deleteMarkers, uploads int
}

// scanBucket scans every version of every object in the versioned bucket, read raw
// (SSE-C objects with their key, as S3 hands them out) and then decrypted and decoded,
// every object's metadata, the keys of delete markers, and any multipart upload left
// open.
func scanBucket(t *testing.T, sc *secretScanner, srv *testharness.S3Server, sseKey []byte) bucketScan {
	t.Helper()
	ctx := context.Background()
	cli := srv.Client(t)
	v, err := cli.GetBucketVersioning(ctx, &s3.GetBucketVersioningInput{Bucket: &srv.Bucket})
	if err != nil {
		t.Fatalf("reading the versioning of bucket %s: %v", srv.Bucket, err)
	}
	if v.Status != s3types.BucketVersioningStatusEnabled {
		t.Fatalf("bucket %s is not versioned: %q", srv.Bucket, v.Status)
	}
	sum := md5Base64(sseKey)
	var n bucketScan
	pages := s3.NewListObjectVersionsPaginator(cli, &s3.ListObjectVersionsInput{Bucket: &srv.Bucket})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			t.Fatalf("listing the object versions of bucket %s: %v", srv.Bucket, err)
		}
		for _, m := range page.DeleteMarkers {
			sc.scan("delete marker key", []byte(aws.ToString(m.Key)))
			n.deleteMarkers++
		}
		for _, o := range page.Versions {
			key, vid := aws.ToString(o.Key), aws.ToString(o.VersionId)
			name := fmt.Sprintf("object %s version %s", key, vid)
			sc.scan("object key", []byte(key))
			in := &s3.GetObjectInput{Bucket: &srv.Bucket, Key: o.Key, VersionId: o.VersionId}
			out, err := cli.GetObject(ctx, in)
			if err != nil {
				in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = aws.String("AES256"), aws.String(base64.StdEncoding.EncodeToString(sseKey)), &sum
				if out, err = cli.GetObject(ctx, in); err != nil {
					t.Fatalf("reading %s: %v", name, err)
				}
			}
			b, err := io.ReadAll(out.Body)
			out.Body.Close()
			if err != nil {
				t.Fatalf("reading %s: %v", name, err)
			}
			var meta []string
			for k, v := range out.Metadata {
				meta = append(meta, k+"="+v)
			}
			sc.scanDeep(name, key, b)
			sc.scan("metadata of "+name, []byte(strings.Join(meta, "\n")))
			n.versions++
			if aws.ToBool(o.IsLatest) {
				n.current++
			}
		}
	}
	// S3 gives no way to read an open upload's parts back, so one left open holds bytes
	// this scan cannot see: it is an error, as well as litter.
	ups := s3.NewListMultipartUploadsPaginator(cli, &s3.ListMultipartUploadsInput{Bucket: &srv.Bucket})
	for ups.HasMorePages() {
		page, err := ups.NextPage(ctx)
		if err != nil {
			t.Fatalf("listing the multipart uploads of bucket %s: %v", srv.Bucket, err)
		}
		for _, u := range page.Uploads {
			n.uploads++
			sc.scan("open multipart upload key", []byte(aws.ToString(u.Key)))
			parts, err := cli.ListParts(ctx, &s3.ListPartsInput{Bucket: &srv.Bucket, Key: u.Key, UploadId: u.UploadId})
			if err != nil {
				t.Fatalf("listing the parts of upload %s of %s: %v", aws.ToString(u.UploadId), aws.ToString(u.Key), err)
			}
			t.Errorf("multipart upload %s of %s is still open, with %d parts the scan cannot read",
				aws.ToString(u.UploadId), aws.ToString(u.Key), len(parts.Parts))
		}
	}
	return n
}

// scanTree scans every file under root, and what it holds decrypted and decoded, and
// returns how many, with the files and dirs that group or others can read, write or
// enter. A restored etcd data dir is etcd's
// layout, written by etcd's own restore library: it is scanned, and checked too, since
// etcd itself keeps it 0700 and its files 0600 or stricter.
func scanTree(t *testing.T, sc *secretScanner, root string) (int, []string) {
	t.Helper()
	n := 0
	var wide []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if p != root && info.Mode().Perm()&0o077 != 0 {
			wide = append(wide, fmt.Sprintf("%v %s", info.Mode(), rel))
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sc.scanDeep("file "+rel, rel, b)
		n++
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return n, wide
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
