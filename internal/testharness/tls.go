package testharness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// TLSFiles are PEM files of a throwaway CA, a server certificate for 127.0.0.1,
// localhost and any more IP addresses asked for (usable as a peer certificate too, as
// kubeadm's etcd server certificate is), and a client certificate, like a kubeadm etcd PKI.
type TLSFiles struct {
	CACert, ServerCert, ServerKey, ClientCert, ClientKey string
	// CAKey signs more client certificates (IssueClientCert), as kubeadm's etcd/ca.key does.
	CAKey string
}

// GenerateTLS writes a fresh CA and certificates into a temp dir; the server certificate
// is also valid for the IP addresses in ips.
func GenerateTLS(t testing.TB, ips ...string) *TLSFiles {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcd-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caKB, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		t.Fatal(err)
	}
	f := &TLSFiles{CACert: writePEM(t, dir, "ca.crt", "CERTIFICATE", caDER), CAKey: writePEM(t, dir, "ca.key", "EC PRIVATE KEY", caKB)}
	sans := []net.IP{net.ParseIP("127.0.0.1")}
	for _, ip := range ips {
		sans = append(sans, net.ParseIP(ip))
	}
	f.ServerCert, f.ServerKey = f.issue(t, dir, "server", "server", sans, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	f.ClientCert, f.ClientKey = f.issue(t, dir, "client", "client", sans, x509.ExtKeyUsageClientAuth)
	return f
}

// IssueClientCert signs a client certificate whose CN is cn, written as name.crt and
// name.key into dir. With etcd's --client-cert-auth and auth enabled, the CN is the etcd
// user the certificate authenticates as.
func (f *TLSFiles) IssueClientCert(t testing.TB, dir, name, cn string) (cert, key string) {
	t.Helper()
	return f.issue(t, dir, name, cn, nil, x509.ExtKeyUsageClientAuth)
}

func (f *TLSFiles) issue(t testing.TB, dir, name, cn string, ips []net.IP, usage ...x509.ExtKeyUsage) (cert, key string) {
	t.Helper()
	ca, caKey := f.loadCA(t)
	k := newKey(t)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage,
		IPAddresses: ips, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name+".crt", "CERTIFICATE", der), writePEM(t, dir, name+".key", "EC PRIVATE KEY", kb)
}

func (f *TLSFiles) loadCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	der := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s holds no PEM block", path)
		}
		return blk.Bytes
	}
	ca, err := x509.ParseCertificate(der(f.CACert))
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(der(f.CAKey))
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

// WithClientTLS makes an embedded etcd serve clients over TLS and require client certificates.
func WithClientTLS(f *TLSFiles) func(*embed.Config) {
	return func(cfg *embed.Config) {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: f.ServerCert, KeyFile: f.ServerKey, TrustedCAFile: f.CACert, ClientCertAuth: true}
		for i := range cfg.ListenClientUrls {
			cfg.ListenClientUrls[i].Scheme = "https"
		}
		for i := range cfg.AdvertiseClientUrls {
			cfg.AdvertiseClientUrls[i].Scheme = "https"
		}
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
