package main

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestImage(t *testing.T) {
	dir := t.TempDir()
	bin, certs := filepath.Join(dir, "etcdguard"), filepath.Join(dir, "ca.crt")
	os.WriteFile(bin, []byte("\x7fELF fake"), 0o755)
	os.WriteFile(certs, []byte("-----BEGIN CERTIFICATE-----"), 0o644)
	out := filepath.Join(dir, "image.tar")
	if err := run(bin, certs, out, "etcdguard:test"); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" || cfg.Config.Entrypoint[0] != "/etcdguard" || cfg.OS != "linux" {
		t.Fatalf("config: user %q entrypoint %v os %s", cfg.Config.User, cfg.Config.Entrypoint, cfg.OS)
	}
	tr := tar.NewReader(mutate.Extract(img))
	modes := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		modes[h.Name] = h.Mode
	}
	if modes["etcdguard"] != 0o755 || modes["etc/ssl/certs/ca-certificates.crt"] != 0o644 || modes["tmp"] != 0o1777 {
		t.Fatalf("files: %v", modes)
	}
}
