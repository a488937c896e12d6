package delta

import (
	"testing"
)

// A listing's key is trusted as a segment's summary only when it is exactly the name a
// segment of that history gets: anything else is read from its manifest.
func FuzzSummary(f *testing.F) {
	f.Add("c1", "20261130T000000Z-abcdef", "c1/deltas/20261130T000000Z-abcdef/00000000000000000020-00000000000000000011.t1-2.json")
	f.Add("c1", "", "c1/deltas/00000000000000000011-00000000000000000020.t1-2.json")
	f.Add("c1", "h", "c1/deltas/h/x.json")
	f.Add("c1", "h", "c1/deltas/h/00000000000000000020-00000000000000000011.json")
	f.Fuzz(func(t *testing.T, cluster, history, key string) {
		m, ok := summary(cluster, history, key)
		if !ok {
			return
		}
		if m.FromRev > m.ToRev || m.FromRev < 1 {
			t.Fatalf("%q: revisions %d-%d run backwards", key, m.FromRev, m.ToRev)
		}
		if got := manifestKey(m); got != key {
			t.Fatalf("%q summarised as a segment whose manifest key is %q", key, got)
		}
	})
}
