package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
)

// The guarded delete as an operator runs it, through the binary.
func TestDelCommand(t *testing.T) {
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), cli, loadgen.Options{Prefix: "/registry-kube-1", Keys: 1500}); err != nil {
		t.Fatal(err)
	}
	count := func() int64 { // every key but the confirms' records under /etcdguard/
		var n int64
		for _, r := range [][2]string{{"\x00", "/etcdguard/"}, {clientv3.GetPrefixRangeEnd("/etcdguard/"), "\x00"}} {
			resp, err := cli.Get(context.Background(), r[0], clientv3.WithRange(r[1]), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			n += resp.Count
		}
		return n
	}
	total := count()
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_STORE=file://" + t.TempDir(), "ETCDGUARD_LOG_LEVEL=warn"}
	incident := []string{"del", "/registry-kube-1/certificatesigningrequest", "prefix"}

	refusals := []struct {
		args []string
		want string
	}{
		{incident, "refusing to delete [\"/registry-kube-1/certificatesigningrequest\", \"prefix\") without a plan; nothing was deleted"},
		{[]string{"del", "-r", "/registry-kube-1/pods"}, "etcdctl v3 has no -r: for every key under a prefix use --prefix"},
		{[]string{"del", "/a", "/b", "--prefix", "--dry-run"}, "too many arguments"},
		{[]string{"del", "--confirm", "p-20200101T000000-000000"}, "no plan p-20200101T000000-000000"},
		{[]string{"del", "/a", "--dry-run", "--confirm", "x"}, "exclude each other"},
	}
	for i, tc := range refusals {
		r := run(t, env, tc.args...)
		if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, tc.want) {
			t.Errorf("%v: exit %d, %q; want %q", tc.args, r.code, line, tc.want)
		}
		if i == 0 && r.code != exitRefused { // the outage's command is refused by the guard
			t.Errorf("%v: exit %d, want %d (refused)", tc.args, r.code, exitRefused)
		}
	}
	if n := count(); n != total {
		t.Fatalf("refusals deleted %d keys", total-n)
	}

	type plan struct {
		PlanID string `json:"plan_id"`
		Range  struct {
			Start, End  string
			DerivedFrom string `json:"derived_from"`
		} `json:"range"`
		KeyCount int64            `json:"key_count"`
		ByType   map[string]int64 `json:"by_type"`
		Warnings []string         `json:"warnings"`
		Expires  string           `json:"expires_at"`
	}
	p := decodeJSON[plan](t, run(t, env, append(incident, "--dry-run", "-o", "json")...))
	if !regexp.MustCompile(`^p-\d{8}T\d{6}-[0-9a-f]{6}$`).MatchString(p.PlanID) || p.Range.End != "prefix" ||
		p.Range.DerivedFrom != "explicit range end" || p.KeyCount == 0 || len(p.Warnings) < 3 || p.Expires == "" || len(p.ByType) < 5 {
		t.Fatalf("plan: %+v", p)
	}
	if r := run(t, env, "del", "--confirm", p.PlanID); r.code != exitRefused || !strings.Contains(r.errorLine(t), "--accept-warnings") {
		t.Fatalf("confirm without accepting the warnings: exit %d %s", r.code, r.stderr)
	}
	if r := run(t, env, "del", "/registry-kube-1/pods/", "--prefix", "--confirm", p.PlanID, "--accept-warnings"); r.code != exitRefused || !strings.Contains(r.errorLine(t), "is not the plan's") {
		t.Fatalf("confirm with another range: exit %d %s", r.code, r.stderr)
	}
	type execution struct {
		Deleted int64  `json:"deleted"`
		SavedTo string `json:"saved_to"`
	}
	ex := decodeJSON[execution](t, run(t, env, append(incident, "--confirm", p.PlanID, "--accept-warnings", "-o", "json")...))
	if ex.Deleted != p.KeyCount || count() != total-p.KeyCount {
		t.Fatalf("deleted %d of %d planned; %d keys left of %d", ex.Deleted, p.KeyCount, count(), total)
	}
	type planInfo struct {
		PlanID string `json:"plan_id"`
		State  string `json:"state"`
	}
	if plans := decodeJSON[[]planInfo](t, run(t, env, "guard", "plans", "-o", "json")); len(plans) != 1 || plans[0].State != "executed" {
		t.Fatalf("plans: %+v", plans)
	}
	r := run(t, env, "guard", "undo", p.PlanID)
	if r.code != 0 || !strings.Contains(r.stdout, "put back") || count() != total {
		t.Fatalf("undo: exit %d, %s%s; %d keys of %d", r.code, r.stdout, r.stderr, count(), total)
	}
}

// On a terminal, a confirm asks the operator to type the number of keys.
func TestDelConfirmAsksOnTerminal(t *testing.T) {
	scriptBin, err := exec.LookPath("script")
	if err != nil {
		t.Skip("util-linux `script` is not installed, so no terminal can be given to the binary")
	}
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	for i := range 7 {
		if _, err := cli.Put(context.Background(), fmt.Sprintf("/registry/leases/default/l%d", i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_STORE=file://" + t.TempDir(), "ETCDGUARD_LOG_LEVEL=warn"}
	type plan struct {
		PlanID   string `json:"plan_id"`
		KeyCount int64  `json:"key_count"`
	}
	p := decodeJSON[plan](t, run(t, env, "del", "/registry/leases/", "--prefix", "--dry-run", "-o", "json"))
	onTerminal := func(answer string) (string, error) {
		cmd := exec.Command(scriptBin, "-qec", etcdguardBin+" del --confirm "+p.PlanID, "/dev/null")
		cmd.Env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir(), "TERM=dumb")
		cmd.Stdin = strings.NewReader(answer + "\n")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := onTerminal("8")
	if err == nil || !strings.Contains(out, "type the number of keys") || !strings.Contains(out, `you typed "8", the plan has 7 keys`) {
		t.Fatalf("wrong count: %v\n%s", err, out)
	}
	if n := must(cli.Get(context.Background(), "/registry/leases/", clientv3.WithPrefix(), clientv3.WithCountOnly())).Count; n != 7 {
		t.Fatalf("a wrong answer deleted keys: %d left", n)
	}
	if out, err := onTerminal("7"); err != nil || !strings.Contains(out, "deleted 7 keys") {
		t.Fatalf("right count: %v\n%s", err, out)
	}
}
