package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// planKeys is the keyspace FuzzPlan plans over, put back before every input.
var planKeys = []string{"/registry/deployments/default/d", "/registry/pods/default/a", "/registry/pods/default/b",
	"/registry/pods/default/é", "/registry/pods/kube-system/c", "/registry/secrets/default/s", "/registry/services/specs/default/kubernetes", "x"}

// planRanges are the ranges FuzzPlan's inputs plan: each seed is a plan MakePlan wrote for one.
var planRanges = [][]string{{"/registry/pods/default/", "--prefix"}, {"/registry/pods/default/a"}, {"/registry/pods", "prefix"},
	{"/registry/secrets", "--from-key"}, {"/registry/", "--prefix"}, {"/nothing/", "--prefix"}}

func planRange(t testing.TB, i uint8) Range {
	var args []string
	for _, a := range planRanges[int(i)%len(planRanges)] {
		if !strings.HasPrefix(a, "--") {
			args = append(args, a)
		}
	}
	flags := planRanges[int(i)%len(planRanges)]
	r, err := Interpret(args, slices.Contains(flags, "--prefix"), slices.Contains(flags, "--from-key"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// resetKeys makes etcd hold exactly planKeys and returns them with their mod revisions.
func resetKeys(t testing.TB, cli *clientv3.Client) {
	ops := []clientv3.Op{clientv3.OpDelete("\x00", clientv3.WithFromKey())}
	for _, k := range planKeys {
		ops = append(ops, clientv3.OpPut(k, "v-"+k))
	}
	if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
}

// keysNow lists every key but the confirms' records (RecordPrefix), which a confirm
// writes before it reads the range, refused or not.
func keysNow(t testing.TB, cli *clientv3.Client) []string {
	return slices.DeleteFunc(rangeKeys(t, cli, Range{Start: "\x00", End: fromKeyEnd}), func(k string) bool { return strings.HasPrefix(k, "/etcdguard/") })
}

// Placeholders for what differs between a seed's plan and the plan made for each input.
const (
	idHole      = "{{ID}}"
	createdHole = "{{CREATED}}"
	expiresHole = "{{EXPIRES}}"
	digestHole  = "{{DIGEST}}"
)

// FuzzPlan stores a mutated plan in place of one MakePlan just made against a real etcd
// and confirms it. A plan that parses is confirmed or refused with ErrRefused (one that
// does not parse says so); nothing is deleted unless the confirm succeeds; and when it
// succeeds the plan said exactly what was deleted: its range holds exactly the deleted
// keys, its key count, first and last key are theirs, and it had no warnings unless
// they were accepted. Each input carries the digest of the seed it was mutated from, as
// damage in the store would: only a change that says the same thing keeps it; or, with
// which's top bit, a digest of what it says.
func FuzzPlan(f *testing.F) {
	e := testharness.StartEtcd(f)
	cli := e.Client(f)
	st, err := file.Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	opts := PlanOptions{Cluster: "c1", MaxKeys: 1000, TTL: time.Hour, PageSize: 3}
	makePlan := func(t testing.TB, which uint8) *Plan {
		resetKeys(t, cli)
		p, err := MakePlan(ctx, cli, st, planRange(t, which), opts)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	seeds := map[string]int{}    // as MakePlan wrote them, and for which range
	seedDocs := map[int][]byte{} // the other way round
	for i := range planRanges {
		p := makePlan(f, uint8(i))
		b, err := store.ReadAll(ctx, st, planKey("c1", p.ID), 1<<20)
		if err != nil {
			f.Fatal(err)
		}
		doc := strings.ReplaceAll(string(b), p.ID, idHole)
		doc = strings.Replace(doc, p.Digest, digestHole, 1)
		for hole, tm := range map[string]time.Time{createdHole: p.CreatedAt, expiresHole: p.ExpiresAt} {
			v, _ := json.Marshal(tm)
			doc = strings.Replace(doc, string(v), `"`+hole+`"`, 1)
		}
		f.Add([]byte(doc), uint8(i), len(p.Warnings) > 0)
		f.Add([]byte(doc), uint8(i)|128, len(p.Warnings) > 0)
		seeds[doc] = i
		seedDocs[i] = []byte(doc)
	}
	testharness.RecordFault(f, testharness.FaultRow{Area: "fuzzing", Fault: "FuzzPlan, 7 execs", Tries: 1,
		Result: "found: a damaged stored plan ({}, its id and cluster gone) made del --confirm fail on a store key built from them " +
			"(its audit record, its state) instead of refusing it; fixed: a stored plan is validated first, and refusals are recorded under the plan asked for"})
	testharness.RecordFault(f, testharness.FaultRow{Area: "fuzzing", Fault: "FuzzPlan, 2000 execs (make test's brief run)", Tries: 1,
		Result: "found: a stored plan that validates but names no cluster made del --confirm fail reading its state under the empty cluster's " +
			"prefix instead of refusing it; fixed: the plan's cluster is checked before its state is read"})
	testharness.RecordFault(f, testharness.FaultRow{Area: "fuzzing", Fault: "FuzzPlan, 2000 execs (a CI run's brief run)", Tries: 1,
		Result: "found: a stored plan damaged into another that agrees with itself (its from-key range starting at /registry/sc, not /registry/secrets, " +
			"holding the same keys) was confirmed for a range the operator never read; fixed: a plan carries the sha256 of what it says, and a confirm refuses one that does not match"})
	f.Fuzz(func(t *testing.T, doc []byte, which uint8, accept bool) {
		redigest := which >= 128
		which &= 0x7f
		p := makePlan(t, which)
		created, _ := json.Marshal(p.CreatedAt)
		expires, _ := json.Marshal(p.ExpiresAt)
		fill := func(doc []byte) []byte {
			b := bytes.ReplaceAll(doc, []byte(idHole), []byte(p.ID))
			b = bytes.ReplaceAll(b, []byte(`"`+createdHole+`"`), created)
			return bytes.ReplaceAll(b, []byte(`"`+expiresHole+`"`), expires)
		}
		var seed Plan
		if err := json.Unmarshal(fill(seedDocs[int(which)%len(planRanges)]), &seed); err != nil {
			t.Fatal(err)
		}
		digest, err := seed.digest()
		if err != nil {
			t.Fatal(err)
		}
		b := bytes.ReplaceAll(fill(doc), []byte(digestHole), []byte(digest))
		// With which's top bit, the digest is written anew for what the input says, as
		// whoever can write the store can: then Validate and the confirm's checks against
		// etcd are all that stands, and a range may be edited into another that holds the
		// same keys.
		var edited Plan
		if redigest && json.Unmarshal(b, &edited) == nil {
			if d, err := edited.digest(); err == nil {
				b = bytes.ReplaceAll(b, []byte(digest), []byte(d))
			}
		}
		if err := store.PutBytes(ctx, st, planKey("c1", p.ID), b); err != nil {
			t.Fatal(err)
		}
		before := keysNow(t, cli)
		ex, err := Confirm(ctx, cli, st, p.ID, ConfirmOptions{Cluster: "c1", AcceptWarnings: accept, PageSize: 3})
		after := keysNow(t, cli)
		var said Plan
		perr := json.Unmarshal(b, &said)
		if i, ok := seeds[string(doc)]; ok && i == int(which)%len(planRanges) && (accept || len(p.Warnings) == 0) && err != nil {
			t.Fatalf("refused a plan as MakePlan wrote it: %v", err)
		}
		if err != nil {
			if !errors.Is(err, ErrRefused) && !(perr != nil && strings.Contains(err.Error(), "is not valid JSON")) {
				t.Fatalf("refused without saying why clearly: %v", err)
			}
			if !slices.Equal(before, after) {
				t.Fatalf("refused (%v), but keys went: %q, then %q", err, before, after)
			}
			return
		}
		if perr != nil {
			t.Fatalf("confirmed a plan that does not parse: %v", perr)
		}
		var deleted, inRange []string
		for _, k := range before {
			if !slices.Contains(after, k) {
				deleted = append(deleted, k)
			}
			if said.Range.Contains(k) {
				inRange = append(inRange, k)
			}
		}
		switch {
		case !slices.Equal(deleted, inRange):
			t.Fatalf("the plan's range %s holds %q, but %q were deleted", said.Range, inRange, deleted)
		case int64(len(deleted)) != said.KeyCount || ex.Deleted != said.KeyCount:
			t.Fatalf("the plan says %d keys, %d were deleted (%d reported)", said.KeyCount, len(deleted), ex.Deleted)
		case len(deleted) > 0 && (said.FirstKey != deleted[0] || said.LastKey != deleted[len(deleted)-1]):
			t.Fatalf("the plan says %q to %q, %q were deleted", said.FirstKey, said.LastKey, deleted)
		case !accept && len(said.Warnings) > 0:
			t.Fatalf("confirmed without --accept-warnings a plan with warnings %q", said.Warnings)
		case !redigest && (said.Range.Start != p.Range.Start || said.Range.End != p.Range.End):
			t.Fatalf("confirmed the range %s for a plan made for %s", said.Range, p.Range)
		}
	})
}

// A stored plan edited so that it still agrees with itself is refused by its digest; one
// whose digest was written anew too is refused by the confirm's count (fewer keys than its
// key list holds) or by Validate (its warnings removed).
func TestConfirmRefusesEditedPlan(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		which uint8
		edit  func(p *Plan)
		want  string
	}{
		// What FuzzPlan found before plans had a digest: the same keys, from another start.
		{"range shifted, same keys", 3, func(p *Plan) { p.Range.Start = "/registry/sc" }, "does not match its digest"},
		{"fewer keys", 0, func(p *Plan) {
			p.KeyCount, p.Sample, p.LastKey, p.ByType = 2, p.Sample[:2], p.Sample[1], map[string]int64{"pods": 2}
		}, "it says 2 keys"},
		{"warnings removed", 2, func(p *Plan) { p.Warnings = []string{} }, "it lacks the warning"},
		{"another id", 0, func(p *Plan) { p.ID = "p-20260101T000000-abcdef" }, "says it is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resetKeys(t, cli)
			p, err := MakePlan(ctx, cli, st, planRange(t, tc.which), PlanOptions{Cluster: "c1", TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			id := p.ID
			tc.edit(p)
			if !strings.Contains(tc.want, "digest") { // the digest written anew, so what else is checked is tested
				p.Digest, _ = p.digest()
			}
			b, _ := json.Marshal(p)
			if err := store.PutBytes(ctx, st, planKey("c1", id), b); err != nil {
				t.Fatal(err)
			}
			before := keysNow(t, cli)
			_, err = Confirm(ctx, cli, st, id, ConfirmOptions{Cluster: "c1", AcceptWarnings: true})
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a refusal saying %q", err, tc.want)
			}
			if after := keysNow(t, cli); !slices.Equal(before, after) {
				t.Fatalf("refused, but keys went: %q, then %q", before, after)
			}
		})
	}
}
