// Package alerting decides whether a cluster's backups are fresh enough, for `etcdguard
// check` (Nagios-style) and, later, the daemon's notifiers.
package alerting

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Status is a Nagios plugin status; its value is the plugin's exit code.
type Status int

const (
	OK Status = iota
	Warning
	Critical
	Unknown
)

func (s Status) String() string {
	return [...]string{"OK", "WARNING", "CRITICAL", "UNKNOWN"}[s]
}

// MarshalText makes a Status read as its name in JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// worse orders statuses for a summary of several clusters: a stale backup outranks a
// cluster that could not be checked.
func worse(a, b Status) Status {
	rank := map[Status]int{OK: 0, Unknown: 1, Warning: 2, Critical: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// Policy is how old the newest snapshot may be.
type Policy struct {
	MaxAge  time.Duration // older is CRITICAL ("etcd snapshots too old")
	WarnAge time.Duration // older is WARNING; 0: no warning level
}

// Freshness is one cluster's verdict; its JSON form is part of `check -o json`.
type Freshness struct {
	Cluster    string  `json:"cluster"`
	Status     Status  `json:"status"`
	Newest     string  `json:"newest"`
	AgeSeconds float64 `json:"age_seconds"`
	Message    string  `json:"message"`
}

// Report is the verdict over every checked cluster.
type Report struct {
	Status   Status      `json:"status"`
	Clusters []Freshness `json:"clusters"`
}

// Evaluate judges one cluster from its newest usable snapshot (all: newest first, as
// snapshot.List returns them); one that failed verification or lost its object is no backup.
func Evaluate(cluster string, all []*snapshot.Manifest, now time.Time, p Policy) Freshness {
	f := Freshness{Cluster: cluster}
	newest := snapshot.Newest(all)
	switch {
	case newest == nil && len(all) > 0:
		f.Status = Critical
		f.Message = fmt.Sprintf("no usable snapshot: all %d failed verification or lost their object (see `etcdguard snapshot list`); take a new one with `etcdguard snapshot save`", len(all))
		return f
	case newest == nil:
		f.Status, f.Message = Critical, "no snapshots at all: check that the etcdguard daemon runs and can reach etcd and the store"
		return f
	}
	age := now.Sub(newest.CreatedAt)
	f.Newest, f.AgeSeconds = newest.ID, age.Seconds()
	switch {
	case age > p.MaxAge:
		f.Status = Critical
		f.Message = fmt.Sprintf("etcd snapshots too old: the newest, %s, is %s old (more than %s); check the etcdguard daemon's logs and metrics", newest.ID, round(age), p.MaxAge)
	case p.WarnAge > 0 && age > p.WarnAge:
		f.Status = Warning
		f.Message = fmt.Sprintf("the newest snapshot, %s, is %s old (more than %s)", newest.ID, round(age), p.WarnAge)
	default:
		f.Message = fmt.Sprintf("the newest snapshot, %s, is %s old", newest.ID, round(age))
	}
	return f
}

func round(d time.Duration) time.Duration {
	if d < time.Hour {
		return d.Round(time.Second)
	}
	return d.Round(time.Minute)
}

// Check judges the given clusters, or with all set every cluster in the store. A store
// that cannot be read is UNKNOWN, never OK.
func Check(ctx context.Context, st store.Store, clusters []string, all bool, now time.Time, p Policy) Report {
	var r Report
	if all {
		found, err := snapshot.Clusters(ctx, st)
		if err != nil {
			return unknown(r, "*", err)
		}
		if len(found) == 0 {
			r.Clusters = append(r.Clusters, Evaluate("*", nil, now, p))
			r.Clusters[0].Message = fmt.Sprintf("no snapshots of any cluster in %s: check --store and that the etcdguard daemons run", st)
			r.Status = Critical
			return r
		}
		clusters = found
	}
	for _, c := range clusters {
		list, err := snapshot.List(ctx, st, c)
		if err != nil {
			r = unknown(r, c, err)
			continue
		}
		f := Evaluate(c, list, now, p)
		r.Clusters = append(r.Clusters, f)
		r.Status = worse(r.Status, f.Status)
	}
	return r
}

func unknown(r Report, cluster string, err error) Report {
	msg := "cannot read the store: " + err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		msg = "the store did not answer in time: " + err.Error()
	}
	r.Clusters = append(r.Clusters, Freshness{Cluster: cluster, Status: Unknown, Message: msg})
	r.Status = worse(r.Status, Unknown)
	return r
}
