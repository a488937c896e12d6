package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
)

// quick retries keep the 100 % runs short; the 10 % runs use the shipped policy.
var quick = store.RetryPolicy{Attempts: 3, Base: 10 * time.Millisecond, Max: 100 * time.Millisecond}

// faultStore is the store as the binary wraps it (retries, deadlines), on a raw store
// the test can inspect, through the fault proxy.
func faultStore(t *testing.T, p *testharness.FaultProxy, policy store.RetryPolicy, timeout time.Duration) (store.Store, *Store) {
	raw := NewFromClient(p.Server().Client(t), p.Server().Bucket, randomPrefix(),
		store.Options{PartSize: MinPartSize, StallTimeout: timeout / 2})
	raw.retry = policy
	return store.Wrap(raw, store.WrapOptions{Timeout: timeout, Retry: policy}), raw
}

// workload puts, reads back, stats, lists and deletes objects of one part and of three,
// failing the test on any error or difference.
func workload(ctx context.Context, t *testing.T, st store.Store, rounds int) {
	t.Helper()
	big := data(7, 2*MinPartSize+MinPartSize/2)
	for i := range rounds {
		small := fmt.Appendf(nil, "manifest %d", i)
		for key, want := range map[string][]byte{fmt.Sprintf("big/%d", i): big, fmt.Sprintf("small/%d", i): small} {
			if err := store.PutBytes(ctx, st, key, want); err != nil {
				t.Fatalf("put %s: %v", key, err)
			}
			got, err := store.ReadAll(ctx, st, key, 1<<30)
			if err != nil {
				t.Fatalf("get %s: %v", key, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("get %s: %d bytes that differ from the %d put", key, len(got), len(want))
			}
			if info, err := st.Stat(ctx, key); err != nil || info.Size != int64(len(want)) {
				t.Fatalf("stat %s = %+v, %v; want %d bytes", key, info, err, len(want))
			}
		}
		list, err := st.List(ctx, "small/")
		if err != nil || len(list) != 1 {
			t.Fatalf("list small/ = %+v, %v; want the one object of this round", list, err)
		}
		if err := st.Delete(ctx, fmt.Sprintf("small/%d", i)); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := st.Stat(ctx, fmt.Sprintf("small/%d", i)); !errors.Is(err, store.ErrNotExist) {
			t.Fatalf("stat after delete = %v, want ErrNotExist", err)
		}
	}
}

func data(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed ^ byte(i>>13)
	}
	return b
}

// TestFaultsTenPercent: with 10 % of every request failing in one way, every call of the
// store succeeds with the right bytes, and nothing is left open.
func TestFaultsTenPercent(t *testing.T) {
	upstream := map[string]*testharness.S3Server{"versitygw": testharness.StartVersityGW(t), "minio": testharness.StartMinIO(t)}
	seed := testharness.FaultSeed(t)
	kinds := [][]testharness.Fault{}
	for _, f := range testharness.AllFaults {
		kinds = append(kinds, []testharness.Fault{f})
	}
	kinds = append(kinds, testharness.AllFaults)
	for _, server := range []string{"versitygw", "minio"} {
		for _, faults := range kinds {
			name := string(faults[0])
			if len(faults) > 1 {
				name = "every-kind"
			}
			t.Run(server+"/"+name, func(t *testing.T) {
				t.Parallel()
				p := testharness.StartS3FaultProxy(t, upstream[server], seed)
				st, raw := faultStore(t, p, store.DefaultRetry, 2*time.Second)
				p.Set(testharness.FaultRule{Faults: faults, Rate: 0.1, Latency: 300 * time.Millisecond})
				workload(t.Context(), t, st, 6)
				p.Set()
				if p.InjectedTotal() == 0 {
					t.Fatalf("no fault injected in %d requests: the test proved nothing", p.Requests())
				}
				checkNoUploads(t, raw)
				t.Logf("%d faults in %d requests: %v", p.InjectedTotal(), p.Requests(), p.InjectedByOp())
				testharness.RecordFault(t, testharness.FaultRow{Area: "S3 store (" + server + ")",
					Fault: name + " on 10% of requests", Tries: p.InjectedTotal(),
					Result: "every put (1 and 3 parts), get, stat, list and delete succeeded with the right bytes; no open upload"})
			})
		}
	}
}

// checkNoUploads fails if a multipart upload is open once the next run's clean-up ran:
// a create answered with an error after it was done leaves one, and only AbortIncomplete
// can find it.
func checkNoUploads(t *testing.T, raw *Store) {
	t.Helper()
	ctx := t.Context()
	if _, err := raw.AbortIncomplete(ctx, "", 0); err != nil {
		t.Fatalf("AbortIncomplete: %v", err)
	}
	if open, err := openUploads(ctx, raw.client, raw.bucket, raw.prefix); err != nil || len(open) > 0 {
		t.Fatalf("open uploads after clean-up: %v, %v", open, err)
	}
}

// TestFaultsAlways: with every request failing, every call fails with an error that says it
// gave up, within a bound, and leaves nothing: no object and, after clean-up, no upload.
func TestFaultsAlways(t *testing.T) {
	upstream := testharness.StartVersityGW(t)
	seed := testharness.FaultSeed(t)
	for _, f := range testharness.AllFaults {
		if f == testharness.FaultLatency {
			continue // a slow answer is still an answer
		}
		t.Run(string(f), func(t *testing.T) {
			t.Parallel()
			p := testharness.StartS3FaultProxy(t, upstream, seed)
			st, raw := faultStore(t, p, quick, 500*time.Millisecond)
			ctx := t.Context()
			if err := store.PutBytes(ctx, st, "old", []byte("there before")); err != nil {
				t.Fatal(err)
			}
			// Before forwarding: the server never sees a request, so none may show. (A
			// request failed after the server did it is done, whatever the answer said:
			// TestFaultsAfterDone.)
			rule := testharness.FaultRule{Faults: []testharness.Fault{f}, Rate: 1, Phase: testharness.PhaseBefore}
			start := time.Now()
			calls := map[string]func() error{
				"put 3 parts": func() error { return store.PutBytes(ctx, st, "big", data(1, 2*MinPartSize+1)) },
				"put 1 part":  func() error { return store.PutBytes(ctx, st, "small", []byte("x")) },
				"get":         func() error { _, err := store.ReadAll(ctx, st, "old", 1<<20); return err },
				"stat":        func() error { _, err := st.Stat(ctx, "old"); return err },
				"list":        func() error { _, err := st.List(ctx, ""); return err },
				"delete":      func() error { return st.Delete(ctx, "old") },
			}
			if f == testharness.FaultTruncate {
				// A cut is always after the server answered: only reads can show it
				// without the server having done the request.
				rule.Ops = []testharness.S3Op{testharness.OpGetObject, testharness.OpHeadObject, testharness.OpListObjects}
				p.Set(rule)
				delete(calls, "put 3 parts")
				delete(calls, "put 1 part")
				delete(calls, "delete")
				// A cut response still brings bytes, so the read goes on from there: it ends
				// with the whole object, or once the responses bring nothing, with an error.
				delete(calls, "get")
				got, err := store.ReadAll(ctx, st, "old", 1<<20)
				if (err == nil && string(got) != "there before") || (err != nil && !strings.Contains(err.Error(), "without a byte")) {
					t.Errorf("get through responses all cut short = %q, %v; want the object, resumed from each cut, or an error once cuts bring nothing", got, err)
				}
			}
			p.Set(rule)
			for name, call := range calls {
				err := call()
				if err == nil {
					t.Errorf("%s succeeded with every request failing", name)
					continue
				}
				if msg := err.Error(); !strings.Contains(msg, "gave up after") && !errors.Is(err, store.ErrStalled) {
					t.Errorf("%s: %v\nwant an error that says it retried and gave up, or that the store stalled", name, err)
				}
				t.Logf("%s: %v", name, err)
			}
			if d := time.Since(start); d > 60*time.Second {
				t.Errorf("failing took %s: a store that always fails must fail fast", d)
			}
			p.Set()
			list, err := st.List(ctx, "")
			if err != nil || len(list) != 1 || list[0].Key != "old" {
				t.Errorf("after the failures the store holds %+v (%v); want only the object that was there", list, err)
			}
			if got, err := store.ReadAll(ctx, st, "old", 1<<20); err != nil || string(got) != "there before" {
				t.Errorf("old = %q, %v; want it untouched", got, err)
			}
			checkNoUploads(t, raw)
			testharness.RecordFault(t, testharness.FaultRow{Area: "S3 store (versitygw)",
				Fault: string(f) + " on every request", Tries: p.InjectedTotal(),
				Result: "put, get, stat, list, delete each failed saying it gave up after retrying (or that the store stalled); no object written; no open upload after clean-up"})
		})
	}
}

// TestFaultsAfterDone: a request the server carried out but whose answer was an error,
// a reset or nothing: the call may fail, but what it leaves is all or nothing, never part.
func TestFaultsAfterDone(t *testing.T) {
	upstream := testharness.StartMinIO(t) // MinIO answers a repeated completion with NoSuchUpload
	seed := testharness.FaultSeed(t)
	for _, f := range []testharness.Fault{testharness.Fault500, testharness.FaultReset, testharness.FaultStall} {
		for _, op := range []testharness.S3Op{testharness.OpCompleteMultipartUpload, testharness.OpUploadPart, testharness.OpPutObject} {
			t.Run(string(f)+"/"+string(op), func(t *testing.T) {
				t.Parallel()
				p := testharness.StartS3FaultProxy(t, upstream, seed)
				st, raw := faultStore(t, p, quick, time.Second)
				ctx := t.Context()
				want := data(3, 2*MinPartSize+1)
				if op == testharness.OpPutObject {
					want = []byte("one part")
				}
				// Once: the retry must cope with what the first attempt did.
				p.Set(testharness.FaultRule{Ops: []testharness.S3Op{op}, Faults: []testharness.Fault{f}, Nth: 1, Phase: testharness.PhaseAfter})
				err := store.PutBytes(ctx, st, "k", want)
				p.Set()
				if p.InjectedTotal() != 1 {
					t.Fatalf("%d faults injected, want 1", p.InjectedTotal())
				}
				if err != nil {
					t.Fatalf("put with one %s answered after the server did %s: %v", f, op, err)
				}
				got, err := store.ReadAll(ctx, st, "k", 1<<30)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("read back %d bytes (%v), want the %d put", len(got), err, len(want))
				}
				checkNoUploads(t, raw)
				testharness.RecordFault(t, testharness.FaultRow{Area: "S3 store (minio)",
					Fault: fmt.Sprintf("%s answered after the server did %s", f, op), Tries: 1,
					Result: "the retry completes the put (a completion retried into NoSuchUpload is checked against the object); right bytes; no open upload"})
			})
		}
	}
}
