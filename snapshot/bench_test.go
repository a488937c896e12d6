package snapshot

import (
	"context"
	"io"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// benchDB is a real etcd snapshot of a Kubernetes-shaped keyspace, made once.
var benchDB []byte

// loadedEtcd is an etcd holding 64 MiB of a Kubernetes-shaped keyspace.
func loadedEtcd(b *testing.B) (*testharness.Etcd, *clientv3.Client) {
	e := testharness.StartEtcd(b)
	cli := e.Client(b)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), cli, loadgen.Options{TargetBytes: 64 << 20, ValueSize: 4096}); err != nil {
		b.Fatal(err)
	}
	return e, cli
}

func loadBenchDB(b *testing.B) []byte {
	if benchDB == nil {
		_, cli := loadedEtcd(b)
		rc, err := cli.Snapshot(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		defer rc.Close()
		if benchDB, err = io.ReadAll(rc); err != nil {
			b.Fatal(err)
		}
	}
	return benchDB
}

// BenchmarkDigest is the per-byte cost every save and verify pays: two sha256 passes and
// the bbolt page scan.
func BenchmarkDigest(b *testing.B) {
	db := loadBenchDB(b)
	b.SetBytes(int64(len(db)))
	b.ReportAllocs()
	for b.Loop() {
		d := newDigest()
		for rest := db; len(rest) > 0; {
			n := min(len(rest), 32<<10) // etcd's message size
			d.Write(rest[:n])
			rest = rest[n:]
		}
		if _, err := d.finish(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompress(b *testing.B) {
	db := loadBenchDB(b)
	for _, c := range []struct{ compression, level string }{
		{"zstd", "fastest"}, {"zstd", "default"}, {"zstd", "better"}, {"gzip", "fastest"}, {"gzip", "default"},
	} {
		b.Run(c.compression+"/"+c.level, func(b *testing.B) {
			b.SetBytes(int64(len(db)))
			var out int64
			for b.Loop() {
				cw := &countWriter{}
				enc, err := newEncoder(cw, c.compression, c.level)
				if err != nil {
					b.Fatal(err)
				}
				enc.Write(db)
				enc.Close()
				out = cw.n
			}
			b.ReportMetric(float64(len(db))/float64(out), "ratio")
		})
	}
}

// BenchmarkSaveToFile is the whole pipeline from a live etcd into the file store.
func BenchmarkSaveToFile(b *testing.B) {
	e, cli := loadedEtcd(b)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	to, err := crypt.ParseRecipients([]string{id.Recipient().String()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	// The same save in the clear and encrypted with age (internal/crypt): what encryption
	// costs in time and CPU on the same 64 MiB keyspace.
	for _, encrypted := range []bool{false, true} {
		name := "plain"
		if encrypted {
			name = "age"
		}
		b.Run(name, func(b *testing.B) {
			fs, err := file.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			st := store.Store(fs)
			if encrypted {
				st = crypt.Wrap(fs, to, nil)
			}
			var size int64
			cpu0 := cpuTime()
			for b.Loop() {
				m, err := Save(context.Background(), cli, st, SaveOptions{Cluster: "bench", Endpoint: e.Endpoints[0], Compression: "zstd", Level: "default"})
				if err != nil {
					b.Fatal(err)
				}
				size = m.DBSize
				st.Delete(context.Background(), m.Object)
			}
			b.SetBytes(size)
			// The process's CPU (the embedded etcd's included, the same in both): the
			// difference is what encryption costs.
			b.ReportMetric((cpuTime()-cpu0).Seconds()*1000/float64(b.N), "cpu-ms/op")
		})
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
