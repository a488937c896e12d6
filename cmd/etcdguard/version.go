package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/internal/version"
)

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print etcdguard's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "etcdguard", version.String())
			return err
		},
	}
}
