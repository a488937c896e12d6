// Command kubectl is the real Kubernetes client, built from the same k8s.io/kubernetes
// module as kube-apiserver (as k8s.io/kubernetes/cmd/kubectl does), for the test that
// follows the restore runbook's commands.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
