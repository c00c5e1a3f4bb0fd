// Command etcd 3.6 for the integration tests: etcd's own main is in a module with replace directives, so
// `go install` cannot build it; this wrapper module requires the server module at a pinned version instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
