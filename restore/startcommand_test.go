package restore

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// The command restore prints starts etcd as printed, also when the peer URL names the
// host (etcd binds only IPs and "localhost").
func TestStartCommandStartsEtcd(t *testing.T) {
	f := newFixture(t, 1)
	hostname, _ := os.Hostname()
	for _, host := range []string{"localhost", hostname} {
		t.Run(host, func(t *testing.T) {
			if ips, err := net.LookupIP(host); err != nil || len(ips) == 0 || !ips[0].IsLoopback() {
				t.Skipf("%s does not resolve to a loopback address (%v, %v)", host, ips, err)
			}
			ports := testharness.FreePorts(t, 2)
			ic := fmt.Sprintf("r1=http://%s:%d", host, ports[0])
			members, err := MemberPlan{InitialCluster: ic, Name: "r1", DataDir: filepath.Join(t.TempDir(), "r1.etcd")}.Members()
			if err != nil {
				t.Fatal(err)
			}
			res, err := Restore(context.Background(), f.st, f.snaps[0], Options{Members: members, InitialCluster: ic})
			if err != nil {
				t.Fatal(err)
			}
			printed := res.Members[0].Command
			client := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
			var stderr strings.Builder
			cmd := exec.Command(testharness.Bin(t, "etcd"), append(printed[1:], "--listen-client-urls", client, "--advertise-client-urls", client)...)
			cmd.Stderr, cmd.SysProcAttr = &stderr, &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() { cmd.Process.Kill(); <-exited }()
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			deadline := time.Now().Add(30 * time.Second)
			for {
				select {
				case err := <-exited:
					exited <- err
					t.Fatalf("etcd started with the printed command %q exited: %v\n%s", printed, err, fatalLines(stderr.String()))
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				resp, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
				cancel()
				if err == nil {
					if resp.Count != *f.snaps[0].KeyCount {
						t.Fatalf("the restored member holds %d keys, the snapshot %d", resp.Count, *f.snaps[0].KeyCount)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("etcd started with %q is not serving after 30s: %v", printed, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// fatalLines is what etcd said when it gave up, out of its whole log.
func fatalLines(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"level":"fatal"`) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
