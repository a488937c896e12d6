package guard

import (
	"bytes"
	"context"
	"fmt"
	"math/big"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// chunkKeys is how many keys pagedRange lists in one keys-only request: about 2 MiB of
// response for Kubernetes keys. 1M keys on etcd 3.6: 20,000 kept the dry run's peak RSS at
// 55 MiB (50,000: 69 MiB) for 4% more time. Tests lower it to cover many chunks.
var chunkKeys int64 = 20_000

// pagedRange reads r at one revision for servers without RangeStream (etcd before 3.7),
// in pages of `page` keys. Such a server counts every key from a request's start to its
// end for each request, however small its limit, so pages over the rest of the range
// make it count the square of the range (1M keys in pages of 1,000: 500 times the keys
// read). So the keys alone are listed, chunkKeys at a time, each listing bounded to a
// window expected to hold about one chunk (guessed from the key density of the chunk or
// window before it), and each page is read between two listed keys: the server counts
// about what it sends. A wrong guess costs counting or a request, never a key: windows
// tile the range, and all reads are at the revision of the first, so the pages hold
// exactly the keys listed.
func pagedRange(ctx context.Context, cli *clientv3.Client, r Range, rev, page int64, keysOnly bool, fn func(k []byte, mod int64, val []byte, lease int64) error) (int64, error) {
	if page <= 0 {
		page = 1000
	}
	get := func(start, end string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
		opts = append(opts, clientv3.WithRange(end))
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, start, opts...)
		if err != nil {
			return nil, fmt.Errorf("reading %s at revision %d: %w", r, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if onPage != nil {
			onPage(resp.Count)
		}
		return resp, nil
	}
	chunk := max(chunkKeys, page)
	start, end := r.Start, r.End // the first listing counts the whole range, once
	winStart, inWindow, empty := start, int64(0), 0
	for {
		// etcd returns a range in ascending key order; asking for a sort would make it read
		// the whole range for every request before applying the limit.
		list, err := get(start, end, clientv3.WithKeysOnly(), clientv3.WithLimit(chunk))
		if err != nil {
			return rev, err
		}
		kvs := list.Kvs
		more := list.More && len(kvs) > 0
		var next, guess string // where the next listing starts; its end at this chunk's density
		if len(kvs) > 0 {
			next = string(kvs[len(kvs)-1].Key) + "\x00"
			guess = keyAhead(string(kvs[0].Key), string(kvs[len(kvs)-1].Key), 1, 1)
		}
		inWindow += int64(len(kvs))
		if keysOnly {
			for _, kv := range kvs {
				if err := fn(kv.Key, kv.ModRevision, nil, kv.Lease); err != nil {
					return rev, err
				}
			}
		} else {
			// Only where the pages begin is kept: the listing is garbage while they are read.
			var starts []string
			for i := 0; i < len(kvs); i += int(page) {
				starts = append(starts, string(kvs[i].Key))
			}
			n := len(kvs)
			list, kvs = nil, nil
			for i, from := range starts {
				to, want := next, n-i*int(page)
				if i+1 < len(starts) {
					to, want = starts[i+1], int(page)
				}
				p, err := get(from, to)
				if err != nil {
					return rev, err
				}
				if len(p.Kvs) != want || p.More {
					return rev, fmt.Errorf("reading %s at revision %d: %d keys from %q to %q, where %d were listed", r, rev, len(p.Kvs), from, to, want)
				}
				for _, kv := range p.Kvs {
					if err := fn(kv.Key, kv.ModRevision, kv.Value, kv.Lease); err != nil {
						return rev, err
					}
				}
			}
		}
		if more { // the window holds more than a chunk: the rest of it, narrowed
			start, end = next, narrower(end, next, guess)
			continue
		}
		if end == r.End {
			return rev, nil
		}
		// The window is done: the next one, as wide as a chunk at the density it had, and
		// at most 16 times as wide (a window with no keys: 16 times). Growing out of a gap
		// after long keys takes a few requests per byte of their shared prefix, so after
		// a few empty windows the next listing goes to the end of the range (counting the
		// rest once) and narrows from its keys.
		num, den := min(chunk, 16*inWindow), max(inWindow, 1)
		if inWindow == 0 {
			num = 16
			empty++
		} else {
			empty = 0
		}
		next = narrower(r.End, end, keyAhead(winStart, end, num, den))
		if empty >= 8 {
			next, empty = r.End, 0
		}
		start, winStart, inWindow, end = end, end, 0, next
	}
}

// narrower returns guess if it is a usable end for a request from start that stays
// inside end (etcd's "\x00" end means no end), and end otherwise.
func narrower(end, start, guess string) string {
	if guess <= start || (end != fromKeyEnd && guess >= end) {
		return end
	}
	return guess
}

// keyAhead returns the key that lies as far past hi as num/den of the distance from lo
// to hi (lo < hi), reading keys as base-256 fractions after their common prefix: 16
// bytes of them, plenty to tell keys apart for a guess. A guess past the end of that
// prefix is cut to it ("" if there is none: no guess), so a window grows out of a gap in
// steps rather than jumping to the end of the range.
func keyAhead(lo, hi string, num, den int64) string {
	n := 0
	for n < len(lo) && n < len(hi) && lo[n] == hi[n] {
		n++
	}
	const digits = 16
	value := func(k string) *big.Int {
		var b [digits]byte
		copy(b[:], k[n:])
		return new(big.Int).SetBytes(b[:])
	}
	h := value(hi)
	width := new(big.Int).Sub(h, value(lo))
	width.Mul(width, big.NewInt(num)).Quo(width, big.NewInt(den))
	if width.Sign() <= 0 {
		width.SetInt64(1)
	}
	ahead := h.Add(h, width)
	if ahead.BitLen() > 8*digits {
		if end := clientv3.GetPrefixRangeEnd(hi[:n]); end != fromKeyEnd {
			return end
		}
		return ""
	}
	var b [digits]byte
	ahead.FillBytes(b[:])
	// Trailing zero bytes only lengthen the key; without them it still sorts after hi.
	return hi[:n] + string(bytes.TrimRight(b[:], "\x00"))
}

// onPage is told the count of keys the server reported for each request, which is what
// it had to count: tests hold it to about the keys read.
var onPage func(counted int64)
