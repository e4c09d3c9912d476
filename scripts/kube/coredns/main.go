// CoreDNS with only the plugins the Kubernetes test tier's real nodes need: Pods resolve
// `<service>.<namespace>.svc.cluster.local` through the `kubernetes` plugin, as in any
// cluster. Built from the coredns module (scripts/kube-cluster build-nodes); the stock
// binary links every plugin (cloud DNS providers included), which this tier does not need.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order the server runs its plugins in (the stock list, cut to these five).
var directives = []string{"bind", "ready", "errors", "log", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
