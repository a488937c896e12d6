// Command etcd is an etcd 3.5.21 server, built from its own module, so that tests run
// etcdguard against the server versions users run, beside the one in our go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
