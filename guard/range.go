// Package guard plans, confirms, executes and undoes etcd deletes. A delete runs only as a
// confirmed plan: the exact range, what is in it and at which revision, stored before
// anything is deleted, and refused if the range changed since.
package guard

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Range is a delete's interpreted key range [Start, End). End is always set: a single
// key K is [K, K+"\x00"), and End "\x00" means every key from Start on, as in etcd.
type Range struct {
	Start       string `json:"start"`
	End         string `json:"end"`
	DerivedFrom string `json:"derived_from"` // "single key", "prefix", "from-key" or "explicit range end"
}

// fromKeyEnd is etcd's range end for "every key >= start".
const fromKeyEnd = "\x00"

// Interpret reads `del KEY [RANGE_END] [--prefix] [--from-key]` exactly as etcdctl del does,
// so a command copied from a runbook means the same range here.
func Interpret(args []string, prefix, fromKey bool) (Range, error) {
	if len(args) == 0 || len(args) > 2 {
		return Range{}, errors.New("del needs a key and an optional range end: del KEY [RANGE_END] [--prefix|--from-key]")
	}
	if prefix && fromKey {
		return Range{}, errors.New("--prefix and --from-key cannot be set at the same time, choose one")
	}
	key := args[0]
	if key == "" && !prefix && !fromKey {
		return Range{}, errors.New("the key is empty: etcd rejects an empty key; for every key use --prefix \"\" or --from-key \"\"")
	}
	if len(args) == 2 {
		if prefix || fromKey {
			return Range{}, errors.New("too many arguments: only one key is accepted with --prefix or --from-key")
		}
		if args[1] == "" { // etcd reads an empty range end as "no range end": one key
			return Range{Start: key, End: key + "\x00", DerivedFrom: "single key"}, nil
		}
		return Range{Start: key, End: args[1], DerivedFrom: "explicit range end"}, nil
	}
	switch {
	case prefix && key == "", fromKey:
		if key == "" {
			key = "\x00"
		}
		return Range{Start: key, End: fromKeyEnd, DerivedFrom: "from-key"}, nil
	case prefix:
		return Range{Start: key, End: clientv3.GetPrefixRangeEnd(key), DerivedFrom: "prefix"}, nil
	}
	return Range{Start: key, End: key + "\x00", DerivedFrom: "single key"}, nil
}

// Contains reports whether key is in the range, by etcd's rules.
func (r Range) Contains(key string) bool {
	return key >= r.Start && (r.End == fromKeyEnd || key < r.End)
}

// Overlaps reports whether r and [start, end) share a key.
func (r Range) Overlaps(start, end string) bool {
	return (r.End == fromKeyEnd || start < r.End) && r.Start < end
}

// Empty reports whether no key can be in the range (an end at or before the start).
func (r Range) Empty() bool { return r.End != fromKeyEnd && r.End <= r.Start }

// String shows the range readably and escaped: [start, end).
func (r Range) String() string {
	end := strconv.Quote(r.End)
	if r.End == fromKeyEnd {
		end = "(every key after)"
	}
	return fmt.Sprintf("[%s, %s)", strconv.Quote(r.Start), end)
}

// flagWords are range ends that are almost certainly a mistyped flag: etcdctl v3 reads
// `del KEY prefix` as the range [KEY, "prefix"), which is how the outage happened.
var flagWords = []string{"prefix", "from-key", "--prefix", "--from-key", "-r", "--range", "prefix=true", "--prefix=true"}

// rangeWarnings are the warnings that follow from the range alone.
func rangeWarnings(r Range) []string {
	var w []string
	if r.DerivedFrom != "explicit range end" {
		return w
	}
	for _, f := range flagWords {
		if r.End == f {
			w = append(w, fmt.Sprintf("the range end %q looks like a flag, not a key: etcdctl reads `del KEY %s` as the range %s; for a prefix use --prefix", r.End, r.End, r))
			break
		}
	}
	dir := r.Start[:strings.LastIndex(r.Start, "/")+1]
	if r.End != fromKeyEnd && !r.Empty() && !strings.HasPrefix(r.End, dir) {
		w = append(w, fmt.Sprintf("the range end %q is not inside the key's prefix %q: the range reaches beyond it", r.End, dir))
	}
	return w
}
