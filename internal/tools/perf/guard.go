package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// runGuard compares `etcdguard del --dry-run` with `etcdctl get` of the same range, on each
// etcd server version in turn (one server at a time: the machine is small).
func (e *env) runGuard(ctx context.Context) error {
	size := fmt.Sprintf("%d keys", e.opts.guardKeys)
	for _, bin := range []string{"etcd", "etcd-3.6", "etcd-3.5"} {
		if _, err := os.Stat(e.tool(bin)); err != nil {
			e.logf("guard: %s missing, skipped (make tools builds it)", e.tool(bin))
			continue
		}
		dir := filepath.Join(e.work, "guard-"+bin)
		srv, err := e.startEtcd(ctx, e.tool(bin), filepath.Join(dir, "etcd"))
		if err != nil {
			return err
		}
		res, err := e.guardOn(ctx, srv, dir, size)
		e.procs.remove(srv.server)
		_ = os.RemoveAll(dir)
		if err != nil {
			return err
		}
		if err := e.record(ctx, res); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) guardOn(ctx context.Context, srv *etcdServer, dir, size string) ([]Result, error) {
	e.logf("guard: loading %s into etcd %s", size, srv.version)
	out, err := e.run(ctx, nil, e.tool("loadgen"), "-endpoints", srv.endpoint, "-keys", strconv.Itoa(e.opts.guardKeys),
		"-value-size", "128", "-concurrency", "16")
	if err != nil {
		return nil, err
	}
	e.logf("%s", strings.TrimSpace(string(out)))
	store := filepath.Join(dir, "store")
	jobs := []*job{
		{name: "etcdctl get /registry --prefix", argv: []string{e.tool("etcdctl"), "--endpoints", srv.endpoint, "--command-timeout", "600s",
			"get", "/registry", "--prefix"}},
		{name: "etcdguard del /registry --prefix --dry-run", argv: []string{e.opts.etcdguard, "--endpoints", srv.endpoint,
			"--store", "file://" + store, "--cluster", "bench", "--log-level", "warn", "del", "/registry", "--prefix", "--dry-run", "-o", "json"}},
	}
	return e.rounds(ctx, "guard", size, srv.version, 0, watched{etcd: srv.pid()}, jobs)
}
