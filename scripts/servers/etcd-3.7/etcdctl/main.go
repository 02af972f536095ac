// etcdctl (v3 API), built from the released module at the version go.mod pins.
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() {
	ctlv3.MustStart()
}
