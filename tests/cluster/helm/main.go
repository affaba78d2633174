// Command helm is the Helm CLI at the release this module pins.
package main

import (
	"errors"
	"fmt"
	"os"

	// Kubeconfig auth plugins, as the released CLI has them.
	_ "k8s.io/client-go/plugin/pkg/client/auth"

	helmcmd "helm.sh/helm/v4/pkg/cmd"
	"helm.sh/helm/v4/pkg/kube"
)

func main() {
	// The field manager Helm's server-side applies are recorded under, whatever this file is
	// called.
	kube.ManagedFieldsManager = "helm"
	root, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	if err := root.Execute(); err != nil {
		var commandErr helmcmd.CommandError
		if errors.As(err, &commandErr) {
			os.Exit(commandErr.ExitCode)
		}
		os.Exit(1)
	}
}
