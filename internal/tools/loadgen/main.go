// Command loadgen fills an etcd with a Kubernetes-like keyspace for the demo
// and the benchmarks, or, with -rate, writes a steady Kubernetes-like churn
// (updates, creates, deletes, transactions, leased events) for -duration.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdguard/etcdguard/internal/loadgen"
)

func main() {
	var (
		o         loadgen.Options
		endpoints = flag.String("endpoints", "http://127.0.0.1:2379", "comma-separated etcd client URLs")
		valueSize = sizeFlag(1024)
		size      sizeFlag
		rate      = flag.Float64("rate", 0, "if > 0: instead of loading a keyspace, write this many revisions per second of churn over the keys under -prefix")
		duration  = flag.Duration("duration", time.Minute, "with -rate: how long to write (0: until interrupted)")
	)
	flag.StringVar(&o.Prefix, "prefix", "/registry", "key prefix, like kube-apiserver's --etcd-prefix")
	flag.IntVar(&o.Keys, "keys", 10000, "number of keys (namespace objects included)")
	flag.Var(&valueSize, "value-size", "mean value size (each varies ±50%), e.g. 1024 or 4KiB")
	flag.Var(&size, "size", "total key+value bytes to write, e.g. 256MiB; overrides -keys")
	flag.Int64Var(&o.Seed, "seed", 1, "seed; the same seed writes the same keys and values")
	flag.IntVar(&o.Concurrency, "concurrency", 8, "parallel transactions (with -rate: parallel writers, default 16)")
	flag.IntVar(&o.Namespaces, "namespaces", 10, "number of namespaces")
	flag.Parse()
	o.ValueSize, o.TargetBytes = int(valueSize), int64(size)

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		fatal(err)
	}
	defer cli.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Writes block while the client keeps reconnecting, so fail fast here
	// rather than hang when etcd is not there.
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = cli.Get(pctx, "health", clientv3.WithCountOnly())
	pcancel()
	if err != nil {
		fatal(fmt.Errorf("cannot reach etcd at %s: %w", *endpoints, err))
	}
	if *rate > 0 {
		co := loadgen.ChurnOptions{Prefix: o.Prefix, Rate: *rate, Duration: *duration, ValueSize: o.ValueSize, Seed: o.Seed, Namespaces: o.Namespaces}
		flag.Visit(func(f *flag.Flag) {
			if f.Name == "concurrency" {
				co.Concurrency = o.Concurrency
			}
		})
		churn(ctx, cli, co)
		return
	}
	st, err := loadgen.LoadK8sKeyspace(ctx, cli, o)
	if err != nil {
		fatal(fmt.Errorf("after %d keys: %w", st.Keys, err))
	}
	sec := st.Duration.Seconds()
	fmt.Printf("loadgen: wrote %d keys, %.1f MiB under %s in %.1fs (%.1f MiB/s, %.0f keys/s), revision %d\n",
		st.Keys, float64(st.Bytes)/(1<<20), o.Prefix, sec, float64(st.Bytes)/(1<<20)/sec, float64(st.Keys)/sec, st.Revision)
}

func churn(ctx context.Context, cli *clientv3.Client, o loadgen.ChurnOptions) {
	st, err := loadgen.Churn(ctx, cli, o)
	if err != nil {
		fatal(err)
	}
	firstErr := ""
	if st.FirstErr != nil {
		firstErr = fmt.Sprintf(" (first: %v)", st.FirstErr)
	}
	fmt.Printf("loadgen: churn under %s: %d writes in %.1fs, %.1f writes/s (target %g): %d updates, %d creates, %d deletes, "+
		"%d txns, %d leased puts on %d leases; %d errors%s; revisions %d..%d\n",
		o.Prefix, st.Writes, st.Duration.Seconds(), st.Rate, o.Rate, st.Updates, st.Creates, st.Deletes,
		st.Txns, st.LeasePuts, st.Leases, st.Errors, firstErr, st.StartRev+1, st.LastRev)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(1)
}

// sizeFlag accepts plain bytes or a number with a KB/KiB/MB/MiB/GB/GiB suffix.
type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeFlag) Set(v string) error {
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
	}
	mult := 1.0
	num := strings.TrimSpace(v)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(num), strings.ToUpper(u.suffix)) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return fmt.Errorf("bad size %q: want e.g. 4096, 64KiB, 256MiB", v)
	}
	*s = sizeFlag(f * mult)
	return nil
}
