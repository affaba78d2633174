// Command coredns is CoreDNS's own server, built at the release this module pins with only the
// plugins the test node's cluster DNS uses: names of Services and their endpoints from the
// apiserver (kubernetes), a listen address (bind), a readiness endpoint (ready), error logging.
// Nothing is forwarded: the cluster's names are all it answers.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	// The directive order is CoreDNS's own (plugin.cfg); only the plugins linked above load.
	coremain.Run()
}
