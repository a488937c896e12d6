package deploy

import (
	"slices"
	"strings"
	"testing"
)

type iamPolicy struct {
	Version   string
	Statement []struct {
		Sid, Effect string
		Action      []string
		Resource    string
	}
}

// knownActions are the IAM actions etcdguard's S3 and KMS calls need; a typo in a policy
// ("s3:DeleteObjects") would silently grant nothing.
var knownActions = map[string]bool{
	"s3:ListBucket": true, "s3:ListBucketMultipartUploads": true, "s3:GetBucketObjectLockConfiguration": true,
	"s3:GetObject": true, "s3:PutObject": true, "s3:DeleteObject": true, "s3:AbortMultipartUpload": true,
	"s3:ListMultipartUploadParts": true, "s3:PutObjectRetention": true, "s3:GetObjectRetention": true,
	"kms:GenerateDataKey": true, "kms:Decrypt": true,
}

// The policies of deploy/iam: each role gets what it calls and no more; the daemon can
// write backups but never remove one.
func TestIAMRolePolicies(t *testing.T) {
	const bucket, objects, kmsKey = "arn:aws:s3:::my-etcd-backups", "arn:aws:s3:::my-etcd-backups/etcd/*", "arn:aws:kms:REGION:ACCOUNT:key/KEY-ID"
	for _, c := range []struct {
		file          string
		need, refused []string
	}{
		{"iam/daemon.json",
			[]string{"s3:ListBucket", "s3:PutObject", "s3:GetObject", "s3:PutObjectRetention", "s3:GetBucketObjectLockConfiguration", "kms:GenerateDataKey", "kms:Decrypt"},
			[]string{"s3:DeleteObject", "s3:GetObjectRetention"}},
		{"iam/pruner.json",
			[]string{"s3:ListBucket", "s3:GetObject", "s3:GetObjectRetention", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListBucketMultipartUploads", "kms:Decrypt"},
			[]string{"s3:PutObject", "s3:PutObjectRetention", "kms:GenerateDataKey"}},
		{"iam/restore.json",
			[]string{"s3:ListBucket", "s3:GetObject", "kms:Decrypt"},
			[]string{"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:PutObjectRetention", "kms:GenerateDataKey"}},
		// Where the age identity is (the daemon refuses --verify with encryption): reads
		// every snapshot, writes only verification records, deletes only a stale failed one.
		{"iam/verifier.json",
			[]string{"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "kms:Decrypt"},
			[]string{"s3:AbortMultipartUpload", "s3:GetObjectRetention"}},
		{"iam-policy.json",
			[]string{"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:GetObjectRetention"},
			nil},
	} {
		var p iamPolicy
		decodeStrictJSON(t, c.file, &p)
		if p.Version != "2012-10-17" {
			t.Errorf("%s: Version %q", c.file, p.Version)
		}
		var granted []string
		for _, s := range p.Statement {
			if s.Effect != "Allow" || s.Sid == "" || len(s.Action) == 0 {
				t.Errorf("%s: statement %+v", c.file, s)
			}
			for _, a := range s.Action {
				if !knownActions[a] || strings.Contains(a, "*") {
					t.Errorf("%s: action %q is a wildcard or not one etcdguard calls", c.file, a)
				}
				// Bucket-level actions on the bucket, object ones on the prefix, KMS on the key.
				want := objects
				switch {
				case strings.HasPrefix(a, "kms:"):
					want = kmsKey
				case strings.HasPrefix(a, "s3:ListBucket") || a == "s3:GetBucketObjectLockConfiguration":
					want = bucket
				}
				// The verifier's writes are narrower: verification records only.
				records := strings.HasPrefix(s.Resource, strings.TrimSuffix(objects, "*")+"*/snapshots/*.") &&
					(strings.HasSuffix(s.Resource, ".verified.json") || strings.HasSuffix(s.Resource, ".failed.json"))
				if s.Resource != want && !(want == objects && records) {
					t.Errorf("%s: %s on %q, want %q", c.file, a, s.Resource, want)
				}
				if c.file == "iam/verifier.json" && (a == "s3:PutObject" || a == "s3:DeleteObject") && !records {
					t.Errorf("%s: %s on %q: only verification records", c.file, a, s.Resource)
				}
				if a == "s3:DeleteObject" && records && !strings.HasSuffix(s.Resource, ".failed.json") {
					t.Errorf("%s: %s on %q: a verified record is never deleted", c.file, a, s.Resource)
				}
				granted = append(granted, a)
			}
		}
		for _, a := range c.need {
			if !slices.Contains(granted, a) {
				t.Errorf("%s lacks %s", c.file, a)
			}
		}
		for _, a := range c.refused {
			if slices.Contains(granted, a) {
				t.Errorf("%s grants %s", c.file, a)
			}
		}
	}
}
