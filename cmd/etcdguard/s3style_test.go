package main

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// Virtual-host and path-style requests, as the binary sends them: an HTTP proxy (the
// SDK honours HTTP_PROXY) records the URL of each request to a made-up endpoint, so no
// DNS for <bucket>.<endpoint> is needed.
func TestS3AddressingStyle(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Host+r.URL.Path)
		mu.Unlock()
		http.Error(w, "recorded", http.StatusForbidden)
	}))
	t.Cleanup(proxy.Close)
	env := []string{"HTTP_PROXY=" + proxy.URL, "AWS_ACCESS_KEY_ID=AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY=secret", "AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true"}
	for _, tc := range []struct {
		name string
		args []string
		want string // the first request: HeadBucket
	}{
		{"virtual-host", nil, "HEAD backups.s3.test:9000/"},
		{"path", []string{"--s3-path-style"}, "HEAD s3.test:9000/backups"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			r := run(t, env, append([]string{"snapshot", "list", "--store", "s3://backups/etcd", "--s3-endpoint", "http://s3.test:9000", "--cluster", "prod"}, tc.args...)...)
			mu.Lock()
			defer mu.Unlock()
			if r.code == 0 || len(seen) == 0 || seen[0] != tc.want {
				t.Fatalf("exit %d; requests %q, want the first to be %q\n%s", r.code, seen, tc.want, r.stderr)
			}
		})
	}
}
