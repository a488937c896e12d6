package store_test

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
	"github.com/etcdguard/etcdguard/store/s3"
)

// password is what url.Parse would read as the password of rawURL's authority, found
// without url.Parse (the URLs that matter here are also those it refuses).
func password(rawURL string) string {
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:at], ":")
	return pw
}

// parts is what a backend reads from a store URL: the bucket and prefix, or the directory.
func parts(t *testing.T, name string) string {
	t.Helper()
	u, err := url.Parse(name)
	if err != nil {
		t.Fatalf("the store's own URL %q does not parse: %v", name, err)
	}
	switch u.Scheme {
	case "s3":
		bucket, prefix, err := s3.ParseURL(u)
		if err != nil {
			t.Fatalf("the store's own URL %q is refused: %v", name, err)
		}
		return bucket + " " + prefix
	case "file":
		dir, err := file.ParseURL(u)
		if err != nil {
			t.Fatalf("the store's own URL %q is refused: %v", name, err)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	t.Fatalf("%q: scheme %q", name, u.Scheme)
	return ""
}

// Whatever --store says, checking it never panics; a URL refused is refused as
// ErrInvalid (a daemon does not retry it) and without its password in the message; a URL
// accepted names the store by a URL without credentials that reads back as the same
// bucket and prefix, or the same directory.
func FuzzStoreURL(f *testing.F) {
	// The store URLs the README and deploy/ give, as operators copy them.
	seen := map[string]bool{}
	for _, doc := range []string{"../README.md", "../deploy/config.example.yaml", "../deploy/credentials.md", "../deploy/static-pod.yaml"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			f.Fatal(err)
		}
		for _, u := range regexp.MustCompile("(s3|file)://[^\\s\"'`)<>,]+").FindAllString(string(b), -1) {
			if !seen[u] {
				seen[u] = true
				f.Add(u)
			}
		}
	}
	if len(seen) < 3 {
		f.Fatalf("found only %d store URLs in the docs", len(seen))
	}
	for _, u := range []string{"", "s3://", "s3:///prefix", "s3://b/a//b", "s3://b/../x", "s3://b:9000/x", "s3://AKIA:secret@b/x",
		"s3://AKIA:secret@b/%zz", "file:relative/dir", "file://host/x", "file:///tmp/a%20b", "s3://b/p?region=x", "gs://b", "s3://b/%ff"} {
		f.Add(u)
	}
	testharness.RecordFault(f, testharness.FaultRow{Area: "fuzzing", Fault: "FuzzStoreURL, its seed inputs", Tries: 1,
		Result: "found: a --store URL that does not parse (s3://KEY:SECRET@bucket/%zz) was printed with its password in the error; " +
			"a bucket with a port or an escape, a prefix with '?' or '..', a query (?region=) were taken or ignored; fixed"})
	f.Fuzz(func(t *testing.T, raw string) {
		name, err := store.Parse(raw)
		pw := password(raw)
		// A password that is also elsewhere in the URL (or in every message) is not the
		// password being leaked.
		leaks := func(msg string) bool {
			return len(pw) >= 3 && strings.Contains(msg, pw) && strings.Count(raw, pw) == 1 && !strings.Contains("malformed --store want s3://BUCKET[/PREFIX] file:///DIR", pw)
		}
		if err != nil {
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("%q: refused, but not as ErrInvalid (a daemon would retry it forever): %v", raw, err)
			}
			if leaks(err.Error()) {
				t.Fatalf("%q: the error shows the password: %v", raw, err)
			}
			return
		}
		u, err := url.Parse(name)
		if err != nil || u.User != nil || leaks(name) {
			t.Fatalf("%q is named %q: not a URL without credentials (%v)", raw, name, err)
		}
		again, err := store.Parse(name)
		if err != nil || again != name {
			t.Fatalf("%q is named %q, which reads back as %q, %v", raw, name, again, err)
		}
		ru, _ := url.Parse(raw)
		if ru.Scheme != u.Scheme {
			t.Fatalf("%q is named %q: another scheme", raw, name)
		}
		if p, q := parts(t, raw), parts(t, name); p != q {
			t.Fatalf("%q reads as %q, but its name %q as %q", raw, p, name, q)
		}
	})
}
