// Package guard will plan, confirm, execute and undo guarded etcd deletes, with an audit
// log in the store (the guarded-delete issue).
package guard
