package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"filippo.io/age"
)

// world is one DB size: a fresh etcd loaded with it, a fresh versitygw, and the snapshot
// etcdctl saves of it (for the restore baseline and the compression section).
type world struct {
	size     string
	dir      string
	etcd     *etcdServer
	s3       *s3Server
	snapFile string
	dbBytes  int64
	egEnv    []string // etcdguard's environment: etcd endpoint, cluster, S3 endpoint and credentials
}

func (w *world) watched() watched { return watched{etcd: w.etcd.pid(), s3: w.s3.pid()} }

func (e *env) runSize(ctx context.Context, size string, first bool) error {
	w, err := e.setupWorld(ctx, size)
	if err != nil {
		return err
	}
	defer func() {
		e.procs.remove(w.etcd.server)
		e.procs.remove(w.s3.server)
		_ = os.RemoveAll(w.dir)
	}()
	sections := []struct {
		name string
		f    func(context.Context, *world) ([]Result, error)
	}{
		{"save", e.runSave}, {"restore", e.runRestore}, {"compress", e.runCompress}, {"pitr", e.runPITR},
	}
	for _, s := range sections {
		if !e.want(s.name) {
			continue
		}
		e.logf("%s, %s", s.name, size)
		res, err := s.f(ctx, w)
		if err != nil {
			return err
		}
		if err := e.record(ctx, res); err != nil {
			return err
		}
	}
	// The delta lag depends on the write rate, not on the DB size: measured on the first size only.
	if first && e.want("lag") {
		e.logf("lag, %s", size)
		res, err := e.runLag(ctx, w)
		if err != nil {
			return err
		}
		if err := e.record(ctx, res); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) setupWorld(ctx context.Context, size string) (*world, error) {
	w := &world{size: size, dir: filepath.Join(e.work, size)}
	if err := os.MkdirAll(filepath.Join(w.dir, "out"), 0o755); err != nil {
		return nil, err
	}
	var err error
	if w.etcd, err = e.startEtcd(ctx, e.tool("etcd"), filepath.Join(w.dir, "etcd")); err != nil {
		return nil, err
	}
	if w.s3, err = e.startS3(ctx, filepath.Join(w.dir, "s3")); err != nil {
		return nil, err
	}
	e.logf("loading %s into etcd %s (%s)", size, w.etcd.version, w.etcd.endpoint)
	out, err := e.run(ctx, nil, e.tool("loadgen"), "-endpoints", w.etcd.endpoint, "-size", size, "-value-size", e.opts.valueSize)
	if err != nil {
		return nil, err
	}
	e.logf("%s", strings.TrimSpace(string(out)))
	w.snapFile = filepath.Join(w.dir, "local.db")
	if _, err := e.run(ctx, nil, e.tool("etcdctl"), "--endpoints", w.etcd.endpoint, "snapshot", "save", w.snapFile); err != nil {
		return nil, err
	}
	st, err := os.Stat(w.snapFile)
	if err != nil {
		return nil, err
	}
	w.dbBytes = st.Size()
	w.egEnv = append([]string{"ETCDGUARD_ENDPOINTS=" + w.etcd.endpoint, "ETCDGUARD_CLUSTER=bench", "ETCDGUARD_LOG_LEVEL=warn"}, w.s3.env...)
	e.logf("DB %s: etcd snapshot %.1f MiB", size, float64(w.dbBytes)/(1<<20))
	return w, nil
}

// rmAll returns a clean hook that removes paths.
func rmAll(paths ...string) func() error {
	return func() error {
		for _, p := range paths {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
		return nil
	}
}

func (e *env) runSave(ctx context.Context, w *world) ([]Result, error) {
	out := filepath.Join(w.dir, "out")
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, err
	}
	eg := func(args ...string) []string { return append([]string{e.opts.etcdguard, "snapshot", "save"}, args...) }
	// versitygw keeps each object as a file under DIR/BUCKET/KEY: removing the prefix's
	// directory between runs keeps the disk from filling with copies of the DB.
	s3prefix := func(p string) func() error { return rmAll(filepath.Join(w.s3.dir, "bench", p)) }
	naive := filepath.Join(out, "naive.db")
	jobs := []*job{
		{name: "etcdctl snapshot save (disk)", argv: []string{e.tool("etcdctl"), "--endpoints", w.etcd.endpoint, "snapshot", "save", filepath.Join(out, "etcdctl.db")},
			clean: rmAll(filepath.Join(out, "etcdctl.db"))},
		{name: "naive: etcdctl + zstd -1 + curl to S3", argv: []string{"bash", "-c",
			`set -e; "$0" --endpoints "$1" snapshot save "$2" >/dev/null; zstd -q -1 -T0 -f "$2" -o "$2.zst"; curl -K "$3" -T "$2.zst" "$4"`,
			e.tool("etcdctl"), w.etcd.endpoint, naive, w.s3.curlCfg, w.s3.url + "/bench/naive/naive.db.zst"},
			clean: func() error { return errJoin(rmAll(naive, naive+".zst")(), s3prefix("naive")()) }},
		{name: "etcdguard -> file://, zstd", argv: eg("--store", "file://"+filepath.Join(out, "store")), env: w.egEnv,
			clean: rmAll(filepath.Join(out, "store"))},
		{name: "etcdguard -> S3, zstd", argv: eg("--store", "s3://bench/save"), env: w.egEnv, clean: s3prefix("save")},
		{name: "etcdguard -> S3, zstd + age", argv: eg("--store", "s3://bench/save-age", "--encrypt-recipient", id.Recipient().String()),
			env: w.egEnv, clean: s3prefix("save-age")},
		{name: "etcdguard -> S3, none", argv: eg("--store", "s3://bench/save-none", "--compression", "none"), env: w.egEnv, clean: s3prefix("save-none")},
	}
	res, err := e.rounds(ctx, "save", w.size, w.etcd.version, w.dbBytes, w.watched(), jobs)
	_ = rmAll(out+"/etcdctl.db", naive, naive+".zst", filepath.Join(out, "store"))()
	return res, err
}

func errJoin(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (e *env) runRestore(ctx context.Context, w *world) ([]Result, error) {
	out := filepath.Join(w.dir, "out")
	if _, err := e.run(ctx, w.egEnv, e.opts.etcdguard, "snapshot", "save", "--store", "s3://bench/restore"); err != nil {
		return nil, err
	}
	// Nothing listens on these: a restore only writes them into the member's data.
	peer := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", 2380+i) }
	one := []string{"--name", "m1", "--initial-cluster", "m1=" + peer(1), "--initial-advertise-peer-urls", peer(1)}
	three := fmt.Sprintf("m1=%s,m2=%s,m3=%s", peer(1), peer(2), peer(3))
	d := func(n string) string { return filepath.Join(out, n) }
	egr := func(args ...string) []string {
		return append([]string{e.opts.etcdguard, "restore", "--store", "s3://bench/restore", "--snapshot", "latest"}, args...)
	}
	jobs := []*job{
		{name: "etcdutl snapshot restore (disk, 1 member)", argv: append([]string{e.tool("etcdutl"), "snapshot", "restore", w.snapFile, "--data-dir", d("r-etcdutl")}, one...),
			clean: rmAll(d("r-etcdutl"))},
		{name: "etcdguard restore (S3, 1 member)", argv: append(egr("--data-dir", d("r-eg")), one...), env: w.egEnv, clean: rmAll(d("r-eg"))},
		{name: "etcdutl x3 (disk, 3 members)", argv: []string{"bash", "-c",
			`set -e; for i in 1 2 3; do "$0" snapshot restore "$1" --name m$i --initial-cluster "$2" --initial-advertise-peer-urls http://127.0.0.1:238$i --data-dir "$3/m$i.etcd" >/dev/null; done`,
			e.tool("etcdutl"), w.snapFile, three, d("r-etcdutl3")}, clean: rmAll(d("r-etcdutl3"))},
		{name: "etcdguard restore --all-members (S3, 3 members)", argv: egr("--all-members", "--initial-cluster", three, "--data-dir", d("r-eg3")),
			env: w.egEnv, clean: rmAll(d("r-eg3"))},
	}
	res, err := e.rounds(ctx, "restore", w.size, w.etcd.version, w.dbBytes, w.watched(), jobs)
	_ = rmAll(d("r-etcdutl"), d("r-eg"), d("r-etcdutl3"), d("r-eg3"))()
	return res, err
}

// etcdRevision is etcd's current revision.
func (e *env) etcdRevision(ctx context.Context, endpoint string) (int64, error) {
	out, err := e.run(ctx, nil, e.tool("etcdctl"), "--endpoints", endpoint, "get", "health-probe", "-w", "json")
	if err != nil {
		return 0, err
	}
	var r struct {
		Header struct {
			Revision int64 `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("etcdctl get -w json: %w", err)
	}
	return r.Header.Revision, nil
}

// churnStats reads loadgen's summary line: "...: N writes in ..., R writes/s ...; E errors".
func churnStats(out []byte) (writes, rate float64) {
	f := strings.Fields(string(out))
	for i, w := range f {
		if i > 0 && strings.HasPrefix(w, "writes") {
			v, err := strconv.ParseFloat(strings.Trim(f[i-1], "(,"), 64)
			if err != nil {
				continue
			}
			if strings.HasPrefix(w, "writes/s") {
				rate = v
			} else if writes == 0 {
				writes = v
			}
		}
	}
	return writes, rate
}
