// Package restore will pick a snapshot (by id, latest, time or revision), verify it, and
// write data dirs for one or N fresh etcd members with etcd's own restore library.
// It is filled by the restore issue; snapshot.ReadVerified is the verified download it builds on.
package restore
