package guard

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

type env struct {
	cli *clientv3.Client
	st  store.Store
}

// newEnv is a real etcd holding a Kubernetes-shaped keyspace under /registry-kube-1, as in
// the outage, and a file store.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), cli, loadgen.Options{Prefix: "/registry-kube-1", Keys: 3000, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &env{cli: cli, st: st}
}

func (e *env) plan(t *testing.T, r Range) *Plan {
	t.Helper()
	p, err := MakePlan(context.Background(), e.cli, e.st, r, PlanOptions{Cluster: "c1", MaxKeys: 1000, TTL: time.Minute, PageSize: 97})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) count(t *testing.T, r Range) int64 {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), r.Start, clientv3.WithRange(r.End), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func (e *env) all(t *testing.T) map[string]string {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		if !strings.HasPrefix(string(kv.Key), "/etcdguard/") { // a confirm's marker (markerKey)
			out[string(kv.Key)] = string(kv.Value)
		}
	}
	return out
}

func contains(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// The outage: `etcdctl del -r /registry-kube-1/certificatesigningrequest prefix`, read
// with etcd's range stream and with the pages older servers get.
func TestIncidentReplay(t *testing.T) {
	for _, stream := range []bool{true, false} {
		t.Run(map[bool]string{true: "stream", false: "pages"}[stream], func(t *testing.T) {
			streaming = stream
			defer func() { streaming = true }()
			incidentReplay(t)
		})
	}
}

func TestEmptyRange(t *testing.T) {
	e := newEnv(t)
	r, _ := Interpret([]string{"/nothing/here/"}, true, false)
	p := e.plan(t, r)
	if p.KeyCount != 0 || p.Revision == 0 || !contains(p.Warnings, "the range is empty") {
		t.Fatalf("plan of an empty range: %d keys at revision %d, warnings %q", p.KeyCount, p.Revision, p.Warnings)
	}
}

func incidentReplay(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	before := e.all(t)
	r, err := Interpret([]string{"/registry-kube-1/certificatesigningrequest", "prefix"}, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if r.Start != "/registry-kube-1/certificatesigningrequest" || r.End != "prefix" || r.DerivedFrom != "explicit range end" {
		t.Fatalf("range %+v", r)
	}
	p := e.plan(t, r)
	if want := e.count(t, r); p.KeyCount != want || want < 2000 {
		t.Fatalf("plan counts %d keys, etcd counts %d in the range", p.KeyCount, want)
	}
	for _, w := range []string{`range end "prefix" looks like a flag`, "not inside the key's prefix", "more than --max-keys 1000", "resource types", "namespaces", "which Kubernetes needs"} {
		if !contains(p.Warnings, w) {
			t.Errorf("warnings %q lack %q", p.Warnings, w)
		}
	}
	for _, typ := range []string{"certificatesigningrequests", "pods", "secrets", "services/specs", "minions"} {
		if p.ByType[typ] == 0 {
			t.Errorf("by_type %v lacks %s", p.ByType, typ)
		}
	}

	if _, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "--accept-warnings") {
		t.Fatalf("confirm without --accept-warnings: %v", err)
	}
	if got := e.all(t); len(got) != len(before) {
		t.Fatalf("a refused confirm deleted %d keys", len(before)-len(got))
	}
	ex, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true, PageSize: 97})
	if err != nil {
		t.Fatal(err)
	}
	after := e.all(t)
	if ex.Deleted != p.KeyCount || int64(len(before)-len(after)) != p.KeyCount {
		t.Fatalf("deleted %d, plan %d, keys gone %d", ex.Deleted, p.KeyCount, len(before)-len(after))
	}
	for k := range after {
		if r.Contains(k) {
			t.Fatalf("%s is in the range but survived", k)
		}
	}
	if _, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "executed") {
		t.Fatalf("second confirm: %v", err)
	}

	u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	restored := e.all(t)
	if u.Restored != p.KeyCount || len(u.Conflicts) != 0 || len(restored) != len(before) {
		t.Fatalf("undo restored %d (conflicts %d), %d keys now, %d before", u.Restored, len(u.Conflicts), len(restored), len(before))
	}
	for k, v := range before {
		if restored[k] != v {
			t.Fatalf("%s came back as %q", k, restored[k])
		}
	}
	plans, err := Plans(ctx, e.st, "c1")
	if err != nil || len(plans) != 1 || plans[0].State != "undone" {
		t.Fatalf("plans = %+v, %v", plans, err)
	}
	audit, _ := e.st.List(ctx, "c1/guard/audit/")
	var events []string
	for _, o := range audit {
		events = append(events, o.Key[strings.LastIndex(o.Key, "-")+1:])
	}
	if strings.Join(events, " ") != "plan.json refuse.json confirm.json refuse.json undo.json" {
		t.Fatalf("audit events %v", events)
	}
}

func TestPrefixOfOneType(t *testing.T) {
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/certificatesigningrequests/"}, true, false)
	p := e.plan(t, r)
	if len(p.Warnings) != 0 || len(p.ByType) != 1 || p.KeyCount == 0 || p.KeyCount != e.count(t, r) {
		t.Fatalf("plan: %d keys, types %v, warnings %q", p.KeyCount, p.ByType, p.Warnings)
	}
	before := e.all(t)
	ex, err := Confirm(context.Background(), e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	after := e.all(t)
	for k := range before {
		_, kept := after[k]
		if kept == strings.HasPrefix(k, "/registry-kube-1/certificatesigningrequests/") {
			t.Fatalf("%s kept=%v after deleting the CSR prefix", k, kept)
		}
	}
	if ex.Deleted != p.KeyCount {
		t.Fatalf("deleted %d of %d", ex.Deleted, p.KeyCount)
	}
}

// Between plan and confirm, any write, create or delete in the range refuses the confirm
// and deletes nothing.
func TestRangeChangedSincePlan(t *testing.T) {
	ctx := context.Background()
	prefix := "/registry-kube-1/pods/"
	tests := []struct {
		name   string
		change func(t *testing.T, cli *clientv3.Client, victim string)
	}{
		{"a key written", func(t *testing.T, cli *clientv3.Client, victim string) { cli.Put(ctx, victim, "changed") }},
		{"a key created", func(t *testing.T, cli *clientv3.Client, _ string) { cli.Put(ctx, prefix+"default/brand-new", "x") }},
		{"a key deleted", func(t *testing.T, cli *clientv3.Client, victim string) { cli.Delete(ctx, victim) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			r, _ := Interpret([]string{prefix}, true, false)
			p := e.plan(t, r)
			tc.change(t, e.cli, p.Sample[3])
			before := e.all(t)
			_, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "the range changed since the plan; run --dry-run again") {
				t.Fatalf("confirm after a change: %v", err)
			}
			if got := e.all(t); len(got) != len(before) {
				t.Fatalf("a refused confirm deleted %d keys", len(before)-len(got))
			}
			if copies, err := savedCopies(ctx, e.st, "c1", p.ID); err != nil || len(copies) > 0 {
				t.Fatalf("a refused confirm left saved keys: %v %v", copies, err)
			}
		})
	}
}

func TestConfirmRefusals(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/leases/"}, true, false)
	expired, err := MakePlan(ctx, e.cli, e.st, r, PlanOptions{Cluster: "c1", TTL: -time.Second})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := Interpret([]string{"/registry-kube-1/events/"}, true, false)
	p := e.plan(t, r)
	tests := []struct {
		name string
		id   string
		opts ConfirmOptions
		want string
	}{
		{"expired", expired.ID, ConfirmOptions{Cluster: "c1"}, "it is expired"},
		{"unknown", "p-20200101T000000-abcdef", ConfirmOptions{Cluster: "c1"}, "no plan p-20200101T000000-abcdef for cluster c1"},
		{"another cluster's", p.ID, ConfirmOptions{Cluster: "c2"}, "no plan " + p.ID + " for cluster c2"},
		{"range differs", p.ID, ConfirmOptions{Cluster: "c1", Range: &other}, "is not the plan's"},
	}
	before := e.all(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Confirm(ctx, e.cli, e.st, tc.id, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if got := e.all(t); len(got) != len(before) {
		t.Fatalf("refusals deleted %d keys", len(before)-len(got))
	}
}

func TestUndoLeavesNewKeysAlone(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	r, _ := Interpret([]string{"/registry-kube-1/leases/"}, true, false)
	p := e.plan(t, r)
	if _, err := Confirm(ctx, e.cli, e.st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: true}); err != nil {
		t.Fatal(err)
	}
	// Something recreated one key meanwhile: undo must not overwrite it.
	if _, err := e.cli.Put(ctx, p.FirstKey, "recreated"); err != nil {
		t.Fatal(err)
	}
	u, err := Undo(ctx, e.cli, e.st, "c1", p.ID, UndoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Conflicts) != 1 || u.Conflicts[0] != p.FirstKey || u.Restored != p.KeyCount-1 {
		t.Fatalf("undo: %+v", u)
	}
	if got := e.all(t)[p.FirstKey]; got != "recreated" {
		t.Fatalf("undo overwrote a key that exists now: %q", got)
	}
}
