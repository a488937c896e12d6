package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

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
	cluster      string
	output       string
	logFormat    string
	logLevel     string
	config       string

	stdout io.Writer
	stderr io.Writer
}

// etcdFlags also read etcdctl's ETCDCTL_* environment, so existing runbooks keep working.
var etcdFlags = map[string]bool{
	"endpoints": true, "cacert": true, "cert": true, "key": true, "user": true, "password": true,
	"dial-timeout": true, "command-timeout": true,
}

func (g *globalOptions) addFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringSliceVar(&g.etcd.Endpoints, "endpoints", []string{"127.0.0.1:2379"}, "etcd endpoints; save uses the first healthy one, in order")
	f.StringVar(&g.etcd.CACert, "cacert", "", "verify etcd's certificate with this CA bundle")
	f.StringVar(&g.etcd.Cert, "cert", "", "client certificate for etcd")
	f.StringVar(&g.etcd.Key, "key", "", "client key for etcd")
	f.StringVar(&g.etcd.User, "user", "", "etcd user, as name or name:password (prefer ETCDCTL_USER)")
	f.StringVar(&g.etcd.Password, "password", "", "etcd password (prefer ETCDCTL_PASSWORD or the config file: flags show in process listings)")
	f.DurationVar(&g.etcd.DialTimeout, "dial-timeout", 5*time.Second, "give up on an unreachable etcd endpoint after this long")
	f.DurationVar(&g.etcd.CommandTimeout, "command-timeout", 30*time.Second, "timeout of short etcd requests (never limits snapshot or restore streams)")
	f.StringVar(&g.storeURL, "store", "", "where snapshots live: s3://BUCKET[/PREFIX] or file:///DIR")
	f.StringVar(&g.storeOpts.S3Endpoint, "s3-endpoint", "", "S3 API endpoint URL for S3-compatible servers (also AWS_ENDPOINT_URL_S3)")
	f.StringVar(&g.storeOpts.S3Region, "s3-region", "", "S3 region (default: from the AWS config, else us-east-1)")
	f.BoolVar(&g.storeOpts.S3PathStyle, "s3-path-style", false, "use path-style S3 URLs (most S3-compatible servers need this)")
	f.StringVar(&g.storeOpts.S3SSE, "s3-sse", "", "server-side encryption: AES256 or aws:kms")
	f.StringVar(&g.storeOpts.S3KMSKeyID, "s3-kms-key-id", "", "KMS key for --s3-sse aws:kms")
	f.StringVar(&g.storeOpts.S3StorageClass, "s3-storage-class", "", "S3 storage class of new objects (e.g. STANDARD_IA)")
	f.DurationVar(&g.storeTimeout, "store-timeout", time.Minute, "fail a store request that makes no progress for this long (a streaming upload or download only while it waits for the store)")
	f.StringVar(&g.partSize, "s3-part-size", "16MiB", "multipart part size; uploads can reach 10,000 parts (16MiB: 156GiB)")
	f.IntVar(&g.storeOpts.Concurrency, "s3-concurrency", 2, "parts uploaded at once; an upload buffers (concurrency+1) × part size")
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
	if setErr != nil {
		return setErr
	}

	if g.output != "table" && g.output != "json" {
		return fmt.Errorf("unknown --output %q: use table or json", g.output)
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
	return nil
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
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("config file %s is not valid YAML: %w", path, err)
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
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		if !known[k] {
			return nil, fmt.Errorf("config file %s: unknown key %q (keys are flag names, e.g. endpoints, store, cluster)", path, k)
		}
		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			out[k] = strings.Join(parts, ",")
		case nil:
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	return out, nil
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
	octx, cancel := context.WithTimeoutCause(ctx, g.storeTimeout, store.ErrStalled)
	defer cancel()
	st, err := store.Open(octx, g.storeURL, g.storeOpts)
	if err != nil && errors.Is(context.Cause(octx), store.ErrStalled) {
		return nil, fmt.Errorf("opening --store %s: %w: no answer within %s (--store-timeout); check --s3-endpoint and that the server is running",
			store.Redact(g.storeURL), store.ErrStalled, g.storeTimeout)
	}
	if err != nil {
		return nil, err
	}
	return store.Wrap(st, store.WrapOptions{Timeout: g.storeTimeout}), nil
}

// clusterFor returns --cluster, or etcd's cluster ID in hex.
func (g *globalOptions) clusterFor(clusterID uint64) string {
	if g.cluster != "" {
		return g.cluster
	}
	return fmt.Sprintf("%x", clusterID)
}
