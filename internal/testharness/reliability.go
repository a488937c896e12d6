package testharness

import (
	"encoding/json"
	"os"
	"testing"
)

// FaultRow is one row of docs/reliability.md: a fault a test injected, how many times,
// and what came of it. Rows with the same Area and Fault are summed by the report.
type FaultRow struct {
	Area   string `json:"area"`   // what was running: "snapshot save", "daemon --delta", "S3 store"
	Fault  string `json:"fault"`  // what was done to it: "kill -9 at a random point", "503 SlowDown on 10% of requests"
	Tries  int    `json:"tries"`  // how many times
	Result string `json:"result"` // what the test proved: "nothing lost; …"
	Test   string `json:"test"`
	Failed bool   `json:"failed,omitempty"`
}

// RecordFault adds row to the reliability report when the test ends, marked failed if the
// test failed, so the report says what the run proved rather than what it hoped. The report
// is a JSON-lines file named by ETCDGUARD_RELIABILITY_LOG (make test sets it and renders
// docs/reliability.md from it); without it, nothing is written.
func RecordFault(t testing.TB, row FaultRow) {
	path := os.Getenv("ETCDGUARD_RELIABILITY_LOG")
	if path == "" {
		return
	}
	row.Test = t.Name()
	t.Cleanup(func() {
		row.Failed = t.Failed()
		b, err := json.Marshal(row)
		if err != nil {
			t.Errorf("reliability report: %v", err)
			return
		}
		// One write of one line to an O_APPEND file: rows from parallel test binaries
		// do not interleave.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Errorf("reliability report: %v", err)
			return
		}
		defer f.Close()
		if _, err := f.Write(append(b, '\n')); err != nil {
			t.Errorf("reliability report %s: %v", path, err)
		}
	})
}
