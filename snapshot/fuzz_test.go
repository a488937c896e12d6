package snapshot

import (
	"encoding/json"
	"errors"
	"testing"
)

// Whatever the store holds under a manifest's key, parsing it never panics, and what it
// accepts is a manifest that names a snapshot and its object and reads back the same.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"id":"20261130T000000Z-abcdef","cluster":"c1","object":"c1/snapshots/20261130T000000Z-abcdef.db.zst","revision":5,"compression":"zstd","encryption":"none"}`))
	f.Add([]byte(`{"id":"x","object":"y","encryption":"age","recipients":["age1abc"],"tail":[{"key":"L3JlZ2lzdHJ5","sum":"00"}]}`))
	f.Add([]byte(`{"id":"","object":""}`))
	f.Add([]byte(`{not json`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseManifest("c1/snapshots/x.json", b)
		if err != nil {
			if !errors.Is(err, errBadManifest) {
				t.Fatalf("a bad manifest is not errBadManifest (List would fail the listing instead of skipping it): %v", err)
			}
			return
		}
		if m.ID == "" || m.Object == "" {
			t.Fatalf("accepted a manifest without id or object: %+v", m)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := parseManifest("c1/snapshots/x.json", again)
		if err != nil || m2.ID != m.ID || m2.Object != m.Object || m2.Revision != m.Revision || m2.SHA256 != m.SHA256 {
			t.Fatalf("does not read back: %+v, %v", m2, err)
		}
	})
}
