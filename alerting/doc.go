// Package alerting will evaluate snapshot freshness and send notifications (webhook,
// Slack, Alertmanager) for the daemon and `etcdguard check` (the daemon issue).
package alerting
