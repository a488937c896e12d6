package daemon

import (
	"testing"
	"time"
)

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
		if next := s.Next(now); !next.IsZero() && !next.After(now) {
			t.Fatalf("%q: next run %s is not after %s", spec, next, now)
		}
	})
}
