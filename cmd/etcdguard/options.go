package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
	"github.com/etcdguard/etcdguard/store"
)

// globalOptions are the flags every subcommand shares (DESIGN.md, CLI contract).
type globalOptions struct {
	etcd      etcdclient.Config
	storeURL  string
	storeOpts store.Options
	// storeTimeout bounds every store call without progress (store.WrapOptions.Timeout).
	storeTimeout time.Duration
	partSize     string
	lockRetain   string
	cluster      string
	output       string
	logFormat    string
	logLevel     string
	config       string
	// Client-side encryption (internal/crypt): public keys to encrypt to, and the file of
	// private keys that decrypt; never a key itself on the command line.
	encryptRecipients, encryptRecipientsFiles []string
	identityFile                              string
	recipients                                *crypt.Recipients
	identities                                *crypt.Identities

	stdout io.Writer
	stderr io.Writer
}

// etcdFlags also read etcdctl's ETCDCTL_* environment, so existing runbooks keep working.
var etcdFlags = map[string]bool{
	"endpoints": true, "cacert": true, "cert": true, "key": true, "user": true, "password": true,
	"dial-timeout": true, "command-timeout": true, "insecure-skip-tls-verify": true,
}

func (g *globalOptions) addFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringSliceVar(&g.etcd.Endpoints, "endpoints", []string{"127.0.0.1:2379"}, "etcd endpoints; save uses the first healthy one, in order")
	f.StringVar(&g.etcd.CACert, "cacert", "", "verify etcd's certificate with this CA bundle")
	f.StringVar(&g.etcd.Cert, "cert", "", "client certificate for etcd")
	f.StringVar(&g.etcd.Key, "key", "", "client key for etcd")
	f.StringVar(&g.etcd.User, "user", "", "etcd user, as name or name:password (prefer ETCDCTL_USER)")
	f.StringVar(&g.etcd.Password, "password", "", "etcd password (prefer ETCDCTL_PASSWORD or the config file: flags show in process listings)")
	f.BoolVar(&g.etcd.InsecureSkipTLSVerify, "insecure-skip-tls-verify", false, "accept any certificate from etcd (CAUTION: anyone in the path can read and change what etcdguard reads and writes; give --cacert instead)")
	f.DurationVar(&g.etcd.DialTimeout, "dial-timeout", 5*time.Second, "give up on an unreachable etcd endpoint after this long")
	f.DurationVar(&g.etcd.CommandTimeout, "command-timeout", 30*time.Second, "timeout of short etcd requests, and the longest a snapshot stream waits for etcd's next bytes (never limits a stream's total length)")
	f.StringVar(&g.storeURL, "store", "", "where snapshots live: s3://BUCKET[/PREFIX] or file:///DIR")
	f.StringVar(&g.storeOpts.S3Endpoint, "s3-endpoint", "", "S3 API endpoint URL for S3-compatible servers (also AWS_ENDPOINT_URL_S3)")
	f.StringVar(&g.storeOpts.S3Region, "s3-region", "", "S3 region (default: from the AWS config, else us-east-1)")
	f.BoolVar(&g.storeOpts.S3PathStyle, "s3-path-style", false, "use path-style S3 URLs (most S3-compatible servers need this)")
	f.StringVar(&g.storeOpts.S3SSE, "s3-sse", "", "server-side encryption: AES256 or aws:kms")
	f.StringVar(&g.storeOpts.S3KMSKeyID, "s3-kms-key-id", "", "KMS key for --s3-sse aws:kms")
	f.StringVar(&g.storeOpts.S3StorageClass, "s3-storage-class", "", "S3 storage class of new objects (e.g. STANDARD_IA)")
	f.StringVar(&g.storeOpts.S3SSECKeyFile, "s3-sse-c-key-file", "", "server-side encryption with this customer key (SSE-C): a file of 32 raw bytes or their base64; every reader needs it too")
	f.StringVar(&g.storeOpts.S3ObjectLockMode, "s3-object-lock-mode", "", "lock every object written (S3 Object Lock, bucket must have it): GOVERNANCE or COMPLIANCE; needs --s3-object-lock-retain")
	f.StringVar(&g.lockRetain, "s3-object-lock-retain", "", "how long each written object stays locked, e.g. 7d or 36h")
	f.DurationVar(&g.storeTimeout, "store-timeout", time.Minute, "fail a store request that makes no progress for this long (a streaming upload or download only while it waits for the store)")
	f.StringVar(&g.partSize, "s3-part-size", "16MiB", "multipart part size; uploads can reach 10,000 parts (16MiB: 156GiB)")
	f.IntVar(&g.storeOpts.Concurrency, "s3-concurrency", 2, "parts uploaded at once; an upload buffers (concurrency+1) × part size")
	f.StringSliceVar(&g.encryptRecipients, "encrypt-recipient", nil, "encrypt snapshots, delta segments and deleted keys with age to this public key (age1...; repeatable)")
	f.StringSliceVar(&g.encryptRecipientsFiles, "encrypt-recipients-file", nil, "file of age public keys to encrypt to, one per line (repeatable)")
	f.StringVar(&g.identityFile, "identity-file", "", "age identity file (age-keygen's output) to read encrypted snapshots, segments and deleted keys")
	f.StringVar(&g.cluster, "cluster", "", "cluster name in the store (default: etcd's cluster ID in hex, or the only cluster in the store)")
	f.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	f.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&g.config, "config", "", "YAML config file whose keys are flag names")
}

// setup applies environment and config file to flags not given on the command line,
// validates the shared flags and sets up logging. Precedence:
// flag > ETCDGUARD_* > ETCDCTL_* > config file > default.
func (g *globalOptions) setup(cmd *cobra.Command) error {
	if g.stdout == nil {
		g.stdout, g.stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
	}
	if pw := cmd.Flags().Lookup("password"); pw != nil && pw.Changed {
		fmt.Fprintln(g.stderr, "warning: --password on the command line is visible in process listings; use ETCDCTL_PASSWORD or the config file")
	}
	if u := cmd.Flags().Lookup("user"); u != nil && u.Changed && strings.Contains(u.Value.String(), ":") {
		fmt.Fprintln(g.stderr, "warning: --user name:password on the command line is visible in process listings; use ETCDCTL_USER or the config file")
	}
	cfgFile := g.config
	if cfgFile == "" {
		cfgFile = os.Getenv("ETCDGUARD_CONFIG")
	}
	cfg, err := readConfig(cfgFile, cmd.Root())
	if err != nil {
		return err
	}
	if err := applySettings(cmd, cfg, cfgFile); err != nil {
		return err
	}

	if g.output != "table" && g.output != "json" {
		return fmt.Errorf("unknown --output %q: use table or json", g.output)
	}
	g.storeOpts.S3ObjectLockMode = strings.ToUpper(g.storeOpts.S3ObjectLockMode)
	// Half the store timeout: a part that stalls is retried before the whole upload,
	// waiting for it, has gone the full timeout without progress.
	g.storeOpts.StallTimeout = g.storeTimeout / 2
	if g.storeOpts.S3ObjectLockRetain, err = parseDays(g.lockRetain); err != nil {
		return fmt.Errorf("invalid --s3-object-lock-retain: %w", err)
	}
	if g.storeOpts.PartSize, err = parseSize(g.partSize); err != nil {
		return fmt.Errorf("invalid --s3-part-size: %w", err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return fmt.Errorf("unknown --log-level %q: use debug, info, warn or error", g.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		slog.SetDefault(slog.New(slog.NewTextHandler(g.stderr, hopts)))
	case "json":
		slog.SetDefault(slog.New(slog.NewJSONHandler(g.stderr, hopts)))
	default:
		return fmt.Errorf("unknown --log-format %q: use text or json", g.logFormat)
	}
	if g.etcd.InsecureSkipTLSVerify {
		slog.Warn("--insecure-skip-tls-verify: etcd's certificate is not verified, so anyone in the network path can impersonate etcd and read or change " +
			"what etcdguard reads and writes (snapshots, deletes, restores); give the CA with --cacert instead")
	}
	warnConfigMode(cfgFile, cfg)
	warnKeyFileModes(map[string]string{"identity-file": g.identityFile, "s3-sse-c-key-file": g.storeOpts.S3SSECKeyFile, "key": g.etcd.Key})
	return nil
}

// warnKeyFileModes warns about private key files others can read: each is worth more than
// the config file (an age identity opens every backup).
func warnKeyFileModes(files map[string]string) {
	for _, flag := range slices.Sorted(maps.Keys(files)) {
		path := files[flag]
		if path == "" {
			continue
		}
		if info, err := os.Stat(path); err == nil && info.Mode().Perm()&0o077 != 0 {
			slog.Warn(fmt.Sprintf("--%s %s is a private key others can read: chmod 600 %s", flag, path, path),
				"file", path, "mode", fmt.Sprintf("%#o", info.Mode().Perm()))
		}
	}
}

// warnConfigMode warns once when the config file holds a secret and others than its owner
// can read it: the config file is where the flags' help sends passwords and webhook URLs,
// so it must be as private as a key file. The warning names the keys, never their values.
func warnConfigMode(path string, cfg map[string]string) {
	if path == "" {
		return
	}
	keys := secretConfigKeys(cfg)
	if len(keys) == 0 {
		return
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm()&0o077 == 0 {
		return
	}
	slog.Warn(fmt.Sprintf("config file %s holds secrets and others can read it: chmod 600 %s", path, path),
		"file", path, "mode", fmt.Sprintf("%#o", info.Mode().Perm()), "keys", strings.Join(keys, ","))
}

// secretConfigKeys lists the config keys whose values are secrets: the etcd password
// (alone or as user name:password), Slack webhook URLs (the path is the token), and any
// other URL that carries a user:password or a query (where receivers put tokens).
func secretConfigKeys(cfg map[string]string) []string {
	var keys []string
	for _, k := range []string{"user", "password", "alert-slack-webhook", "alert-webhook", "alert-alertmanager", "store", "s3-endpoint", "endpoints"} {
		v := cfg[k]
		if v == "" {
			continue
		}
		secret := false
		switch k {
		case "user":
			secret = strings.Contains(v, ":")
		case "password", "alert-slack-webhook", "alert-webhook": // a generic webhook's path may be its token
			secret = true
		default:
			for _, raw := range strings.Split(v, ",") {
				u, err := url.Parse(strings.TrimSpace(raw))
				// An unparsable URL may still hold a token: count it.
				secret = secret || err != nil || u.User != nil || u.RawQuery != ""
			}
		}
		if secret {
			keys = append(keys, k)
		}
	}
	return keys
}

// applySettings sets cmd's flags not given on the command line from the environment and
// the config file.
func applySettings(cmd *cobra.Command, cfg map[string]string, cfgFile string) error {
	var setErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || setErr != nil {
			return
		}
		val, from, ok := lookupSetting(f.Name, cfg, cfgFile)
		if !ok {
			return
		}
		if err := f.Value.Set(val); err != nil {
			setErr = fmt.Errorf("invalid %s for --%s: %w", from, f.Name, err)
		}
	})
	return setErr
}

func envName(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// lookupSetting finds a flag's value in the environment or the config file. from names
// the source for error messages, never the value (it may be a secret).
func lookupSetting(flag string, cfg map[string]string, cfgFile string) (val, from string, ok bool) {
	if v, ok := os.LookupEnv(envName("ETCDGUARD_", flag)); ok {
		return v, envName("ETCDGUARD_", flag), true
	}
	if etcdFlags[flag] {
		if v, ok := os.LookupEnv(envName("ETCDCTL_", flag)); ok {
			return v, envName("ETCDCTL_", flag), true
		}
	}
	if v, ok := cfg[flag]; ok {
		return v, fmt.Sprintf("key %q in %s", flag, cfgFile), true
	}
	return "", "", false
}

// readConfig reads a YAML file of flag names to values. Keys that are no flag of any
// command are refused, so a typo does not silently leave a default in place.
func readConfig(path string, root *cobra.Command) (map[string]string, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	return parseConfig(path, b, root)
}

// yamlLine finds the line numbers in a YAML parser's message.
var yamlLine = regexp.MustCompile(`line \d+`)

// nearestFlag is the flag whose name k is a typo of (at most 2 edits, fewer for short
// names), or "" if none is that close.
func nearestFlag(k string, known map[string]bool) string {
	best, bestD := "", 0
	for name := range known {
		d := editDistance(k, name)
		if d > 2 || d > len(name)/3 {
			continue
		}
		if best == "" || d < bestD || d == bestD && name < best {
			best, bestD = name, d
		}
	}
	return best
}

// editDistance is Levenshtein's distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// parseConfig reads a config file's contents. Each value is its text as written, as it
// would be given to the flag (0123 stays 0123, no stays no: YAML's typing would turn a
// password 0123 into 83), a list is its items joined by commas, and a value that is a
// mapping, or a list holding one, is refused: its keys are no flags either. Errors never
// quote a value, which may be a secret: not even the YAML parser's, which does.
func parseConfig(path string, b []byte, root *cobra.Command) (map[string]string, error) {
	notYAML := func(err error) error {
		where := strings.Join(yamlLine.FindAllString(err.Error(), -1), ", ")
		if where == "" {
			where = "somewhere"
		}
		return fmt.Errorf("config file %s is not valid YAML (%s; the parser's message is not shown, as it can quote a secret)", path, where)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc, next yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return map[string]string{}, nil // empty, or only comments
	} else if err != nil {
		return nil, notYAML(err)
	}
	// A second document would be ignored, with every setting in it.
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, notYAML(err)
		}
		return nil, fmt.Errorf("config file %s: line %d: a second YAML document (---): put every setting in one", path, next.Line)
	}
	if len(doc.Content) == 0 {
		return map[string]string{}, nil
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config file %s: line %d: want a mapping of flag names to values (endpoints: ..., store: ...)", path, top.Line)
	}
	known := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	delete(known, "version") // --version and --help are actions, not settings
	delete(known, "help")
	out := map[string]string{}
	lines := map[string]int{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		kn, vn := top.Content[i], resolveAlias(top.Content[i+1])
		k := kn.Value
		if kn.Kind != yaml.ScalarNode || !known[k] {
			switch near := nearestFlag(k, known); {
			case k == "version" || k == "help":
				return nil, fmt.Errorf("config file %s: line %d: %q is an action of the command line, not a setting: remove it", path, kn.Line, k)
			case kn.Kind == yaml.ScalarNode && near != "":
				return nil, fmt.Errorf("config file %s: line %d: unknown key %q (did you mean %q?)", path, kn.Line, k, near)
			}
			// Not shown: a key far from every flag may be a line gone wrong that holds a
			// secret, such as "password:hunter2: x" with no space, or a token on its own.
			return nil, fmt.Errorf("config file %s: line %d: unknown key, not shown (it is no flag's name, nor close to one: keys are flag names such as endpoints, store, cluster, each followed by \": \")", path, kn.Line)
		}
		if first, ok := lines[k]; ok {
			return nil, fmt.Errorf("config file %s: line %d: key %q again (first on line %d)", path, kn.Line, k, first)
		}
		lines[k] = kn.Line
		notValue := fmt.Errorf("config file %s: line %d: the value of %q is a mapping: want a value or a list of values", path, vn.Line, k)
		switch vn.Kind {
		case yaml.ScalarNode:
			if vn.Tag != "!!null" {
				out[k] = vn.Value
			}
		case yaml.SequenceNode:
			parts := make([]string, len(vn.Content))
			for j, item := range vn.Content {
				if item = resolveAlias(item); item.Kind != yaml.ScalarNode {
					return nil, notValue
				}
				parts[j] = item.Value
			}
			out[k] = strings.Join(parts, ",")
		default:
			return nil, notValue
		}
	}
	return out, nil
}

// resolveAlias returns the node an alias (*name) stands for.
func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// parseSize reads sizes like 16MiB, 64M or 1048576.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := int64(1)
	num := strings.TrimSpace(s)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSuffix(num, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size like 16MiB", s)
	}
	return n * mult, nil
}

// parseDays reads a duration that may be given in days (7d), as retention periods are;
// "" is none.
func parseDays(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.Atoi(n)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("%q is not a duration like 7d or 36h", s)
		}
		return time.Duration(d) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a duration like 7d or 36h", s)
	}
	return d, nil
}

// limitMemory caps a streaming command's memory at the budget the benchmarks hold us to:
// 64 MiB plus the upload's part buffers, unless GOMEMLIMIT is set. Almost all that a
// stream allocates besides its part buffers is garbage at once (every grpc message), and
// with only GOGC the heap would grow to twice what is live before a collection. The soft
// limit covers the Go runtime's memory; 32 MiB of the budget is left for the binary's own
// pages, which count in RSS but not in that limit.
func (g *globalOptions) limitMemory() {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	parts := g.storeOpts.PartSize
	if parts == 0 {
		parts = 16 << 20
	}
	debug.SetMemoryLimit(32<<20 + int64(g.storeOpts.Concurrency+1)*parts)
}

// openStore opens --store with the decorators every command's store gets.
func (g *globalOptions) openStore(ctx context.Context) (store.Store, error) {
	if err := g.loadKeys(); err != nil {
		return nil, err
	}
	st, err := g.openBackend(ctx)
	if err != nil {
		return nil, err
	}
	return g.wrapStore(st), nil
}

// loadKeys reads the encryption keys the flags name. Their errors are usage errors,
// before the store is touched.
func (g *globalOptions) loadKeys() error {
	var err error
	if g.recipients == nil {
		if g.recipients, err = crypt.ParseRecipients(g.encryptRecipients, g.encryptRecipientsFiles); err != nil {
			return store.Invalid(err)
		}
	}
	if g.identities == nil {
		if g.identities, err = crypt.LoadIdentities(g.identityFile); err != nil {
			return store.Invalid(err)
		}
	}
	return nil
}

// wrapStore puts the decorators around a backend: retries and deadlines (store.Wrap), then
// encryption outermost, so what is encrypted is also what is retried and fenced.
func (g *globalOptions) wrapStore(st store.Store) store.Store {
	return crypt.Wrap(store.Wrap(st, store.WrapOptions{Timeout: g.storeTimeout, Retry: store.DefaultRetry}), g.recipients, g.identities)
}

// openBackend opens --store, checking the bucket, within --store-timeout.
func (g *globalOptions) openBackend(ctx context.Context) (store.Store, error) {
	octx, cancel := context.WithTimeoutCause(ctx, g.storeTimeout, store.ErrStalled)
	defer cancel()
	st, err := store.Open(octx, g.storeURL, g.storeOpts)
	if err != nil && errors.Is(context.Cause(octx), store.ErrStalled) {
		return nil, fmt.Errorf("opening --store %s: %w: no answer within %s (--store-timeout); check --s3-endpoint and that the server is running",
			store.Redact(g.storeURL), store.ErrStalled, g.storeTimeout)
	}
	return st, err
}

// clusterFor returns --cluster, or etcd's cluster ID in hex.
func (g *globalOptions) clusterFor(clusterID uint64) string {
	if g.cluster != "" {
		return g.cluster
	}
	return fmt.Sprintf("%x", clusterID)
}
