package guard

import (
	"context"
	"slices"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

var fuzzKeys = []string{"\x00", "/a", "/a/", "/a/b", "/a/c", "/a0", "/b", "a", "ab", "b", "prefix", "prefiy", "z", "\xfe", "\xff", "\xff\xff"}

// etcdctlOps builds the request etcdctl del makes for the same arguments (its getDelOp).
func etcdctlOps(args []string, prefix, fromKey bool) (string, []clientv3.OpOption) {
	key := args[0]
	var opts []clientv3.OpOption
	if len(args) == 2 {
		opts = append(opts, clientv3.WithRange(args[1]))
	}
	if prefix {
		if key == "" {
			key = "\x00"
			opts = append(opts, clientv3.WithFromKey())
		} else {
			opts = append(opts, clientv3.WithPrefix())
		}
	}
	if fromKey {
		if key == "" {
			key = "\x00"
		}
		opts = append(opts, clientv3.WithFromKey())
	}
	return key, opts
}

// FuzzInterpret checks the range interpretation against a real etcd: the keys our Range
// contains are exactly the keys etcd selects for etcdctl's request with the same arguments.
func FuzzInterpret(f *testing.F) {
	e := testharness.StartEtcd(f)
	cli := e.Client(f)
	for _, k := range fuzzKeys {
		if _, err := cli.Put(context.Background(), k, "v"); err != nil {
			f.Fatal(err)
		}
	}
	seeds := []struct {
		key, end        string
		hasEnd          bool
		prefix, fromKey bool
	}{
		{"/registry-kube-1/certificatesigningrequest", "prefix", true, false, false},
		{"/a", "", false, true, false}, {"/a/", "", false, true, false}, {"", "", false, true, false},
		{"/a", "", false, false, true}, {"", "", false, false, true}, {"/a", "/b", true, false, false},
		{"b", "a", true, false, false}, {"a", "\x00", true, false, false}, {"\xff", "", false, true, false},
		{"\xff\xff", "", false, true, false}, {"ab", "", false, false, false}, {"", "", false, false, false},
		{"/a", "x", true, true, false}, {"/a", "", false, true, true},
	}
	for _, s := range seeds {
		f.Add(s.key, s.end, s.hasEnd, s.prefix, s.fromKey)
	}
	f.Fuzz(func(t *testing.T, key, end string, hasEnd, prefix, fromKey bool) {
		args := []string{key}
		if hasEnd {
			args = append(args, end)
		}
		r, err := Interpret(args, prefix, fromKey)
		if err != nil {
			return // etcdctl refuses these argument combinations too (or etcd rejects the key)
		}
		k, opts := etcdctlOps(args, prefix, fromKey)
		resp, err := cli.Get(context.Background(), k, append(opts, clientv3.WithKeysOnly())...)
		if err != nil {
			t.Fatalf("etcd refused %q %v: %v, but Interpret accepted %s", k, args, err, r)
		}
		var want, got []string
		for _, kv := range resp.Kvs {
			want = append(want, string(kv.Key))
		}
		for _, fk := range fuzzKeys {
			if r.Contains(fk) {
				got = append(got, fk)
			}
		}
		// etcd may hold keys beyond the fixed set only if the fuzzer chose them; it does not write.
		if !slices.Equal(got, want) {
			t.Fatalf("args %q prefix=%v from-key=%v: range %s contains %q, etcd selects %q", args, prefix, fromKey, r, got, want)
		}
		if r.Empty() && len(want) > 0 {
			t.Fatalf("range %s is called empty but etcd selects %q", r, want)
		}
	})
}

func TestInterpretErrors(t *testing.T) {
	tests := []struct {
		args            []string
		prefix, fromKey bool
		want            string
	}{
		{nil, false, false, "needs a key"},
		{[]string{"a", "b", "c"}, false, false, "needs a key"},
		{[]string{"a"}, true, true, "cannot be set at the same time"},
		{[]string{"a", "b"}, true, false, "too many arguments"},
		{[]string{""}, false, false, "the key is empty"},
	}
	for _, tc := range tests {
		if _, err := Interpret(tc.args, tc.prefix, tc.fromKey); err == nil || !contains([]string{err.Error()}, tc.want) {
			t.Errorf("Interpret(%q, %v, %v) = %v, want %q", tc.args, tc.prefix, tc.fromKey, err, tc.want)
		}
	}
}
