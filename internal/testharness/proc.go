package testharness

import "syscall"

// killWithParent makes the kernel kill a server the harness started if the test binary
// dies (go test's timeout, a panic), so no etcd or S3 server outlives its test.
func killWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
