// Package deploy will hold the static pod manifest, systemd unit, PrometheusRule, example
// config, IAM policy and runbooks, and the tests that decode them strictly (the daemon issue).
package deploy
