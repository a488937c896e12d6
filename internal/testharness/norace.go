//go:build !race

package testharness

// Race reports whether the tests run under the race detector (go test -race), which makes
// Go code several times slower: etcdguard in a subprocess and etcd embedded in the test.
const Race = false
