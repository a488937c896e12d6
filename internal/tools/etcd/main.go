// Command etcd is a real etcd server built from the etcd module pinned in
// go.mod, because `go install go.etcd.io/etcd/server/v3` fails on the
// module's replace directives and Debian's etcd is too old.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
