package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"
)

// CheckKey rejects keys that are not plain slash-separated relative paths, so that
// no key can escape a file store's directory or mean different objects on
// different backends ("a//b", "./a", "../a", "/a", "a\b").
func CheckKey(key string) error {
	if key == "" || key == "." || !fs.ValidPath(key) || strings.ContainsAny(key, "\\\x00") {
		return fmt.Errorf("invalid object key %q: want a relative slash-separated path without empty, '.' or '..' elements", key)
	}
	return nil
}

// CheckPrefix is CheckKey for List and AbortIncomplete prefixes, which may be
// empty or end with a slash.
func CheckPrefix(prefix string) error {
	p := strings.TrimSuffix(prefix, "/")
	if p == "" && prefix != "/" {
		return nil
	}
	if err := CheckKey(p); err != nil {
		return fmt.Errorf("invalid prefix %q: want a relative slash-separated path without empty, '.' or '..' elements", prefix)
	}
	return nil
}

// PutBytes stores b under key.
func PutBytes(ctx context.Context, s Store, key string, b []byte) error {
	_, err := s.Put(ctx, key, bytes.NewReader(b))
	return err
}

// ReadAll reads the whole object at key, refusing objects larger than limit bytes
// so that a wrong key (a snapshot instead of a manifest) cannot exhaust memory.
func ReadAll(ctx context.Context, s Store, key string, limit int64) ([]byte, error) {
	rc, err := s.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", key, s, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s from %s: object is larger than the %d bytes expected", key, s, limit)
	}
	return b, nil
}

// LockedUntil returns the latest retention date among keys that are still locked at now
// (zero if none is), so a caller can leave a group of objects alone before deleting any
// of them: a manifest deleted while its locked snapshot stays would hide a good backup.
// Missing keys are skipped.
func LockedUntil(ctx context.Context, s Store, now time.Time, keys ...string) (time.Time, error) {
	var until time.Time
	for _, key := range keys {
		info, err := s.Stat(ctx, key)
		if errors.Is(err, ErrNotExist) {
			continue
		}
		if err != nil {
			return until, err
		}
		if info.Locked(now) && info.RetainUntil.After(until) {
			until = info.RetainUntil
		}
	}
	return until, nil
}
