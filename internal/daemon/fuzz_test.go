package daemon

import (
	"strings"
	"testing"
	"time"
)

func TestParseSchedule(t *testing.T) {
	for _, tc := range []struct {
		spec, err string
	}{
		{spec: "0 */1 * * *"},
		{spec: "@every 30s"},
		{spec: "0 2 * * 1-5"},
		{spec: "0 0 29 2 *"}, // leap days come
		{spec: "0 0 30 2 *", err: "names no date that exists"},
		{spec: "0 0 31 4 *", err: "names no date that exists"},
		{spec: "0 0 * *", err: "invalid --schedule"},
	} {
		_, err := ParseSchedule(tc.spec)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseSchedule(%q) = %v, want error %q", tc.spec, err, tc.err)
		}
	}
}

// A --schedule is accepted only if it has a next run, and parsing never panics.
func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{"0 */1 * * *", "*/30 * * * * *", "@every 30s", "@hourly", "0 0 30 2 *", "@every 0s", "* * * * * * *", "TZ=Europe/Paris 0 1 * * *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := ParseSchedule(spec)
		if err != nil {
			return
		}
		now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
		if next := s.Next(now); next.IsZero() || !next.After(now) {
			t.Fatalf("%q: next run %s is not after %s", spec, next, now)
		}
	})
}
