package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/internal/version"
)

// addVersionFlag gives the root command --version: one line, printed before the config
// file or environment is read, so it works on a host with nothing set up. No -v shorthand:
// it reads as "verbose" to most operators.
func addVersionFlag(root *cobra.Command) {
	root.Version = version.Get().Line()
	root.Flags().Bool("version", false, "print etcdguard's version in one line and exit")
	root.SetVersionTemplate("etcdguard {{.Version}}\n")
}

func newVersionCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print etcdguard's version, commit, build date, Go and embedded etcd client versions",
		Long: "Print etcdguard's version. -o json prints version, commit, date (the build date, or the\n" +
			"commit time for a binary built by `go install`), go, etcd_client (the etcd version etcdguard\n" +
			"embeds, the one etcdctl and etcdutl in its image have) and platform.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := version.Get()
			if g.output == "json" {
				return printJSON(cmd.OutOrStdout(), info)
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "etcdguard", info.Line())
			return err
		},
	}
}
