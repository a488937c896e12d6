// Command reliability renders docs/reliability.md from the rows the fault tests of a
// `make test` run recorded (testharness.RecordFault): reliability IN.jsonl OUT.md.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: reliability IN.jsonl OUT.md")
		os.Exit(2)
	}
	if err := render(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		os.Exit(1)
	}
}

type key struct{ area, fault string }

type agg struct {
	tries, failed int
	results       []string
	tests         []string
}

func render(in, out string) error {
	f, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("%w: run make test, which records the rows", err)
	}
	defer f.Close()
	rows := map[key]*agg{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var r testharness.FaultRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s:%d: %w", in, line, err)
		}
		k := key{r.Area, r.Fault}
		a := rows[k]
		if a == nil {
			a = &agg{}
			rows[k] = a
		}
		a.tries += r.Tries
		if r.Failed {
			a.failed += r.Tries
		}
		if !slices.Contains(a.results, r.Result) {
			a.results = append(a.results, r.Result)
		}
		if !slices.Contains(a.tests, r.Test) {
			a.tests = append(a.tests, r.Test)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	keys := make([]key, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		if c := strings.Compare(a.area, b.area); c != 0 {
			return c
		}
		return strings.Compare(a.fault, b.fault)
	})
	var b strings.Builder
	b.WriteString("# Reliability under faults\n\n")
	b.WriteString("Written by `make test` (internal/tools/reliability) from what its fault tests recorded; do not edit.\n")
	b.WriteString("Each row is proved by the tests named: a test that failed marks its row FAILED.\n\n")
	b.WriteString("| Area | Fault | Times | Result | Tests |\n|---|---|---:|---|---|\n")
	for _, k := range keys {
		a := rows[k]
		result := strings.Join(a.results, "; ")
		if a.failed > 0 {
			result = fmt.Sprintf("**FAILED** %d of %d: %s", a.failed, a.tries, result)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s |\n", cell(k.area), cell(k.fault), a.tries, cell(result), cell(strings.Join(a.tests, ", ")))
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

// cell keeps a value from breaking the table.
func cell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ") }
