package guard

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// TestPagedRange reads ranges of differently spread keys in pages, as from a server
// without RangeStream, and checks that every key in the range is read once, in order, at
// one revision, and that the server counted about the keys read (paging over the whole
// rest of the range made it count the square of the range).
func TestPagedRange(t *testing.T) {
	cli := testharness.StartEtcd(t).Client(t)
	ctx := context.Background()
	defer func(n int64) { chunkKeys = n }(chunkKeys)
	chunkKeys = 500
	layouts := []struct {
		name string
		keys func() []string
		r    Range
	}{
		{"kubernetes names", func() (ks []string) {
			for i := range 6000 {
				ks = append(ks, fmt.Sprintf("/registry/pods/ns-%d/pod-%05d", i%7, i))
			}
			return ks
		}, Range{Start: "/registry/", End: clientv3.GetPrefixRangeEnd("/registry/"), DerivedFrom: "prefix"}},
		{"long shared middles", func() (ks []string) {
			for i := range 3000 {
				ks = append(ks, fmt.Sprintf("/a/%040d/%x", i/1000, i*7919))
			}
			return ks
		}, Range{Start: "/a/", End: clientv3.GetPrefixRangeEnd("/a/"), DerivedFrom: "prefix"}},
		{"binary keys up to 0xff", func() (ks []string) {
			for i := range 3000 {
				ks = append(ks, string([]byte{0xff, byte(i >> 8), 0xff, byte(i), 0x00}))
			}
			return ks
		}, Range{Start: "\xff", End: fromKeyEnd, DerivedFrom: "from-key"}},
		// Windows that run past keys sharing 2,000 bytes grew out of the gap after them a
		// byte of that prefix at a time: thousands of requests.
		{"long keys", func() (ks []string) {
			long := strings.Repeat("x", 2000)
			for i := range 1500 {
				ks = append(ks, fmt.Sprintf("/l/%s%08d", long, i*7919%100000))
			}
			return ks
		}, Range{Start: "/l/", End: clientv3.GetPrefixRangeEnd("/l/"), DerivedFrom: "prefix"}},
		{"a dense island in a sparse range", func() (ks []string) {
			for c := 'a'; c <= 'z'; c++ {
				ks = append(ks, "/s/"+string(c))
			}
			for i := range 4000 {
				ks = append(ks, fmt.Sprintf("/s/m/%d", i))
			}
			return ks
		}, Range{Start: "/s/", End: "/s/y", DerivedFrom: "explicit range end"}},
	}
	for _, l := range layouts {
		keys := l.keys()
		for _, c := range []struct {
			page     int64
			keysOnly bool
		}{{1, false}, {7, false}, {100, false}, {7, true}} {
			page, keysOnly := c.page, c.keysOnly
			t.Run(fmt.Sprintf("%s, pages of %d, keys only %v", l.name, page, keysOnly), func(t *testing.T) {
				if _, err := cli.Delete(ctx, "\x00", clientv3.WithFromKey()); err != nil {
					t.Fatal(err)
				}
				for batch := range slices.Chunk(keys, 100) {
					var ops []clientv3.Op
					for _, k := range batch {
						ops = append(ops, clientv3.OpPut(k, "v"))
					}
					if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
						t.Fatal(err)
					}
				}
				want := rangeKeys(t, cli, l.r)
				if len(want) < 1000 {
					t.Fatalf("the layout puts only %d keys in its range", len(want))
				}
				// Written after the read began: the pages read at its revision, without it.
				var got []string
				var counted, requests int64
				onPage = func(c int64) { counted += c; requests++ }
				defer func() { onPage = nil }()
				rev, err := pagedRange(ctx, cli, l.r, 0, page, keysOnly, func(k []byte, _ int64, _ []byte, _ int64) error {
					if len(got) == 10 {
						if _, err := cli.Put(ctx, want[len(want)-1]+"\x00late", "v"); err != nil {
							return err
						}
					}
					got = append(got, string(k))
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("read %d keys at revision %d, the range holds %d (first difference at %d)", len(got), rev, len(want), firstDiff(got, want))
				}
				n := int64(len(want))
				// The first listing counts the range, the others about what they list, the
				// pages what they read: a few times the range (paging over the rest of the
				// range counted n²/2page).
				if limit := 6 * n; counted > limit {
					t.Errorf("the server counted %d keys in %d requests to read %d in pages of %d, more than %d", counted, requests, n, page, limit)
				}
				// Pages round up in each listing, and listings of windows the guesses made too
				// narrow add requests.
				limit := 16*(n/chunkKeys+1) + 40
				if !keysOnly {
					limit += n / page
				}
				if requests > limit {
					t.Errorf("%d requests to read %d keys in pages of %d, more than %d", requests, n, page, limit)
				}
				t.Logf("%d keys, pages of %d: %d requests, %d keys counted", n, page, requests, counted)
			})
		}
	}
}

func rangeKeys(t testing.TB, cli *clientv3.Client, r Range) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), r.Start, clientv3.WithRange(r.End), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var ks []string
	for _, kv := range resp.Kvs {
		ks = append(ks, string(kv.Key))
	}
	return ks
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
