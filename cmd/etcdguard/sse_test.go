package main

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
)

// Save, verify and restore through the binary under each kind of server-side encryption,
// against MinIO with its built-in KMS over TLS (it refuses SSE-C over HTTP), and check
// that the server applied what was asked.
func TestServerSideEncryptionRoundTrip(t *testing.T) {
	srv := testharness.StartMinIOWith(t, testharness.MinIOOptions{KMS: true, TLS: true})
	e := testharness.StartEtcd(t)
	if _, err := e.Client(t).Put(context.Background(), "/registry/secrets/default/s", "v"); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(t.TempDir(), "sse-c.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		flags []string
		check func(*s3.HeadObjectOutput) bool
	}{
		{"sse-s3", []string{"--s3-sse", "AES256"}, func(h *s3.HeadObjectOutput) bool { return h.ServerSideEncryption == types.ServerSideEncryptionAes256 }},
		{"sse-kms", []string{"--s3-sse", "aws:kms", "--s3-kms-key-id", srv.KMSKey}, func(h *s3.HeadObjectOutput) bool {
			return h.ServerSideEncryption == types.ServerSideEncryptionAwsKms && strings.HasSuffix(aws.ToString(h.SSEKMSKeyId), srv.KMSKey)
		}},
		{"sse-c", []string{"--s3-sse-c-key-file", keyFile}, func(h *s3.HeadObjectOutput) bool { return aws.ToString(h.SSECustomerAlgorithm) == "AES256" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			// srv.Env sets AWS_CA_BUNDLE: the binary trusts MinIO's certificate the way an
			// operator's would trust a private CA.
			env := append(srv.Env(), "ETCDCTL_ENDPOINTS="+e.Endpoints[0], "ETCDGUARD_STORE="+srv.URL(c.name), "ETCDGUARD_CLUSTER=prod")
			r := run(t, env, append([]string{"snapshot", "save", "-o", "json"}, c.flags...)...)
			m := decodeJSON[snapshot.Manifest](t, r)
			rep := decodeJSON[snapshot.VerifyReport](t, run(t, env, append([]string{"snapshot", "verify", "latest", "-o", "json"}, c.flags...)...))
			if !rep.OK {
				t.Fatalf("verify: %+v", rep)
			}
			dataDir := filepath.Join(t.TempDir(), "m1.etcd")
			r = run(t, env, append([]string{"restore", "--snapshot", "latest", "--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:2380",
				"--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--data-dir", dataDir}, c.flags...)...)
			if r.code != 0 {
				t.Fatalf("restore: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(dataDir, "member", "snap", "db")); err != nil {
				t.Fatalf("restore wrote no database: %v", err)
			}
			for _, obj := range []string{m.Object, "prod/snapshots/" + m.ID + ".json"} {
				in := &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: aws.String(c.name + "/" + obj)}
				if c.name == "sse-c" {
					sum := md5Base64(key)
					in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = aws.String("AES256"), aws.String(base64.StdEncoding.EncodeToString(key)), &sum
				}
				h, err := srv.Client(t).HeadObject(context.Background(), in)
				if err != nil {
					t.Fatalf("head %s: %v", obj, err)
				}
				if !c.check(h) {
					t.Errorf("%s: the server says encryption %q, KMS key %q, SSE-C %q", obj, h.ServerSideEncryption, aws.ToString(h.SSEKMSKeyId), aws.ToString(h.SSECustomerAlgorithm))
				}
			}
			if c.name != "sse-c" {
				return
			}
			r = run(t, env, "snapshot", "verify", "latest")
			if r.code == 0 {
				t.Fatal("verify without the SSE-C key succeeded")
			}
			line := r.errorLine(t)
			t.Logf("without the key: %s", line)
			if !strings.Contains(line, "--s3-sse-c-key-file") {
				t.Errorf("without the key: %q, want the flag named", line)
			}
			if strings.Contains(r.stderr, base64.StdEncoding.EncodeToString(key)) {
				t.Error("the key is in the output")
			}
		})
	}
}

func md5Base64(b []byte) string {
	sum := md5.Sum(b)
	return base64.StdEncoding.EncodeToString(sum[:])
}
