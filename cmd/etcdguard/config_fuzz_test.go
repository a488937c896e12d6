package main

import (
	"maps"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// secretLine finds the values of the config keys that hold secrets, as written on their line.
var secretLine = regexp.MustCompile(`(?m)^[ \t-]*["']?(password|user|alert-webhook|alert-slack-webhook)["']?[ \t]*:[ \t]*(.*)$`)

// plainLine is a line `key: value` whose value YAML reads as written, unless it is null.
var plainLine = regexp.MustCompile(`(?m)^([a-z0-9-]+): ([A-Za-z0-9._/-]+)$`)

// secrets lists the secret values in a config file's text.
func secrets(doc string) []string {
	var out []string
	for _, m := range secretLine.FindAllStringSubmatch(doc, -1) {
		v := m[2]
		if i := strings.Index(v, " #"); i >= 0 {
			v = v[:i]
		}
		v = strings.TrimLeft(strings.TrimSpace(v), "*&!|>-\"' ")
		v = strings.TrimRight(v, "\"' ")
		if len(v) >= 4 {
			out = append(out, v)
		}
	}
	return out
}

func flagNames(root *cobra.Command) map[string]bool {
	names := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return names
}

// Whatever a config file holds, reading it and applying it to every command never panics;
// a file read has flag names for keys (no help, no version) and values as written (a
// password 0123 stays 0123), and reads back the same once written out again; and no error,
// from the YAML parser or from a flag refusing its value, quotes a secret value.
func FuzzConfigFile(f *testing.F) {
	example, err := os.ReadFile("../../deploy/config.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, doc := range []string{
		string(example),
		"endpoints: [https://cfg-1:2379, https://cfg-2:2379]\nstore: file:///from-config\ncluster: cfgcluster\ns3-part-size: 32MiB\n",
		"password: 0123\nuser: root:hunter22\nalert-slack-webhook: https://hooks.slack.com/services/T0/B0/XXXXXXXX\n",
		"password: *hunter2\n", "password: !hunter2 x\n", "password: !!int hunter2\n", "password:\n  [x]: hunter2\n",
		"store: {bucket: x}\n", "<<: {cluster: x}\n", "cluster: a\n---\ncluster: b\n", "- a\n- b\n", "cluster: no\nkeep-last: 010\n",
		"schedule-unknown-to-version: 1\n", "version: true\n", "alert-webhook: [\"https://x/a\\\"b\"]\n", "",
	} {
		f.Add(doc)
	}
	testharness.RecordFault(f, testharness.FaultRow{Area: "fuzzing", Fault: "FuzzConfigFile, its seed inputs", Tries: 1,
		Result: "found: YAML typing changed values (password: 0123 became 83, cluster: no became false); " +
			"YAML errors quoted secret values (password: *hunter2); a mapping value and a second document were silently taken or ignored; fixed"})
	f.Fuzz(func(t *testing.T, doc string) {
		const path = "/etc/etcdguard/config.yaml"
		root := newRootCommand()
		cfg, err := parseConfig(path, []byte(doc), root)
		if err == nil {
			known := flagNames(root)
			for k := range cfg {
				if !known[k] || k == "help" || k == "version" {
					t.Fatalf("read key %q, which is no setting", k)
				}
			}
			out, merr := yaml.Marshal(cfg)
			if merr != nil {
				t.Fatal(merr)
			}
			again, aerr := parseConfig(path, out, root)
			if aerr != nil || !maps.Equal(again, cfg) {
				t.Fatalf("read %q, written out as %q, reads back as %q: %v", cfg, out, again, aerr)
			}
			if asWritten(doc) {
				for _, m := range plainLine.FindAllStringSubmatch(doc, -1) {
					k, v := m[1], m[2]
					if strings.Count(doc, k+":") != 1 {
						continue
					}
					if got, ok := cfg[k]; v == "null" || v == "Null" || v == "NULL" {
						if ok {
							t.Fatalf("%s: null read as %q", k, got)
						}
					} else if got != v {
						t.Fatalf("%s: %s read as %q", k, v, got)
					}
				}
			}
			// Apply it to every command, as setup does (flags refuse values of the wrong kind).
			var apply func(c *cobra.Command)
			apply = func(c *cobra.Command) {
				if err == nil {
					_ = c.ParseFlags(nil) // merges the persistent flags in
					err = applySettings(c, cfg, path)
				}
				for _, sub := range c.Commands() {
					apply(sub)
				}
			}
			apply(root)
		}
		if err == nil {
			return
		}
		msg := err.Error()
		for _, s := range secrets(doc) {
			if strings.Count(doc, s) != 1 {
				continue // also elsewhere in the file: a key, a comment
			}
			shown := strings.Contains(msg, s) || len(s) > 10 && strings.Contains(msg, s[:7]) // yaml shortens values so
			if !shown {
				continue
			}
			// Wording that holds these characters whatever the value is no leak.
			other := strings.ReplaceAll(doc, s, strings.Repeat("Q", len(s)))
			if _, err2 := parseConfig(path, []byte(other), newRootCommand()); err2 != nil && strings.Contains(err2.Error(), s) {
				continue
			}
			t.Fatalf("the error quotes the secret %q: %v", s, err)
		}
	})
}

// asWritten reports whether every line of doc is at the left margin (no value goes on to
// the next line) and the file is a single document.
func asWritten(doc string) bool {
	for _, l := range strings.Split(doc, "\n") {
		if l != "" && (l[0] == ' ' || l[0] == '\t' || strings.HasPrefix(l, "---") || strings.HasPrefix(l, "...") || strings.HasPrefix(l, "%")) {
			return false
		}
	}
	return true
}
