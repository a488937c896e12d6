package main

import (
	"os"
	"slices"
	"testing"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The example config and the static pod only use flags etcdguard has.
func TestDeployFilesUseRealFlags(t *testing.T) {
	root := newRootCommand()
	if _, err := readConfig("../../deploy/config.example.yaml", root); err != nil {
		t.Fatalf("config.example.yaml: %v", err)
	}
	b, err := os.ReadFile("../../deploy/static-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.Unmarshal(b, &pod); err != nil {
		t.Fatal(err)
	}
	c := pod.Spec.Containers[0]
	cmd, rest, err := root.Find(c.Command[1:])
	if err != nil || cmd.Name() != "daemon" {
		t.Fatalf("the pod runs %v: %v", c.Command, err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("the pod's flags %v: %v", rest, err)
	}
	// The AWS SDK's own variables that point it at the mounted credentials file.
	sdkVars := []string{"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"}
	for _, e := range c.Env {
		if slices.Contains(sdkVars, e.Name) {
			continue
		}
		found := false
		cmd.Flags().VisitAll(func(f *pflag.Flag) { found = found || envName("ETCDGUARD_", f.Name) == e.Name })
		if !found {
			t.Errorf("the pod sets %s, which is no flag's variable", e.Name)
		}
	}
}
