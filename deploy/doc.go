// Package deploy holds what runs etcdguard in production: the static pod manifest, the
// systemd unit, the PrometheusRule and its promtool tests, the PodMonitor and ServiceMonitor
// (monitoring/), an example config, the IAM policy and bucket lifecycle rule, and runbooks.
// Its tests decode each of them strictly; the rules run in promtool.
package deploy
