package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fakeELF is the smallest file debug/elf reads as a 64-bit little-endian executable for
// machine, with a PT_INTERP program header when dynamic (as a cgo binary has). tag makes
// each file's content distinct so the test can tell which binary landed where.
func fakeELF(t *testing.T, machine elf.Machine, dynamic bool, tag string) []byte {
	t.Helper()
	var buf bytes.Buffer
	h := elf.Header64{Type: uint16(elf.ET_EXEC), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT), Ehsize: 64, Phentsize: 56}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	if dynamic {
		h.Phoff, h.Phnum = 64, 1
	}
	binary.Write(&buf, binary.LittleEndian, h)
	if dynamic {
		binary.Write(&buf, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_INTERP), Off: 120, Filesz: 28, Memsz: 28})
		buf.WriteString("/lib64/ld-linux-x86-64.so.2\x00")
	}
	buf.WriteString(tag)
	return buf.Bytes()
}

// platformDir writes the three binaries for arch (with the ELF machine given, which a test
// may get wrong on purpose) into a temp dir.
func platformDir(t *testing.T, arch string, machine elf.Machine, dynamic string) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range binaries {
		data := fakeELF(t, machine, b.file == dynamic, b.file+"-"+arch)
		if err := os.WriteFile(filepath.Join(dir, b.file), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func writeCerts(t *testing.T) string {
	certs := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(certs, []byte("-----BEGIN CERTIFICATE-----"), 0o644); err != nil {
		t.Fatal(err)
	}
	return certs
}

// imageFiles returns the image's flattened file system: name -> header and content.
func imageFiles(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		hdrs[name] = h
		if data[name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
}

// checkPlatformImage checks one platform's image: config, entrypoint, the three binaries
// where the static pod and the runbook look for them, built for arch.
func checkPlatformImage(t *testing.T, img v1.Image, arch string) {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != arch {
		t.Errorf("%s: config platform %s/%s", arch, cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/etcdguard"}) || !slices.Equal(cfg.Config.Cmd, []string{"daemon"}) || cfg.Config.User != "65532:65532" {
		t.Errorf("%s: entrypoint %q cmd %q user %q", arch, cfg.Config.Entrypoint, cfg.Config.Cmd, cfg.Config.User)
	}
	if !slices.Contains(cfg.Config.Env, "PATH=/usr/local/bin:/usr/bin:/bin") {
		t.Errorf("%s: env %q: etcdctl is not on PATH", arch, cfg.Config.Env)
	}
	hdrs, data := imageFiles(t, img)
	for _, b := range binaries {
		h := hdrs[b.path]
		if h == nil {
			t.Errorf("%s: no /%s in the image", arch, b.path)
			continue
		}
		if h.Mode != 0o755 || h.Uid != 0 {
			t.Errorf("%s: /%s mode %o uid %d", arch, b.path, h.Mode, h.Uid)
		}
		f, err := elf.NewFile(bytes.NewReader(data[b.path]))
		if err != nil {
			t.Errorf("%s: /%s: %v", arch, b.path, err)
			continue
		}
		if f.Machine != machines[arch] {
			t.Errorf("%s: /%s is for %v", arch, b.path, f.Machine)
		}
		if !bytes.HasSuffix(data[b.path], []byte(b.file+"-"+arch)) {
			t.Errorf("%s: /%s is not the %s given for %s", arch, b.path, b.file, arch)
		}
	}
	for _, shell := range []string{"bin/sh", "bin/bash", "bin/busybox"} {
		if hdrs[shell] != nil {
			t.Errorf("%s: the image has /%s", arch, shell)
		}
	}
	if hdrs["etc/ssl/certs/ca-certificates.crt"] == nil || hdrs["tmp"] == nil || hdrs["tmp"].Mode != 0o1777 {
		t.Errorf("%s: CA bundle or /tmp missing or wrong", arch)
	}
}

func TestOCIIndex(t *testing.T) {
	certs := writeCerts(t)
	out := filepath.Join(t.TempDir(), "image.oci.tar")
	o := options{
		archs:   archFlags{"amd64": platformDir(t, "amd64", elf.EM_X86_64, ""), "arm64": platformDir(t, "arm64", elf.EM_AARCH64, "")},
		caCerts: certs, out: out, tag: "ghcr.io/etcdguard/etcdguard:v9.9.9", format: "oci", version: "v9.9.9", revision: "abc",
	}
	if err := run(o); err != nil {
		t.Fatal(err)
	}
	// Unpack the archive as `skopeo copy oci-archive:` or `docker load` would.
	dir := t.TempDir()
	untar(t, out, dir)
	outer, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	om, err := outer.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(om.Manifests) != 1 || om.Manifests[0].MediaType != types.OCIImageIndex ||
		om.Manifests[0].Annotations["io.containerd.image.name"] != "ghcr.io/etcdguard/etcdguard:v9.9.9" ||
		om.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v9.9.9" {
		t.Fatalf("index.json: %+v", om.Manifests)
	}
	idx, err := outer.ImageIndex(om.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, m := range im.Manifests {
		if m.Platform == nil {
			t.Fatalf("manifest %s has no platform", m.Digest)
		}
		platforms = append(platforms, m.Platform.String())
		if m.MediaType != types.OCIManifestSchema1 {
			t.Errorf("%s: media type %s", m.Platform, m.MediaType)
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkPlatformImage(t, img, m.Platform.Architecture)
		cfg, _ := img.ConfigFile()
		if cfg.Config.Labels["org.opencontainers.image.version"] != "v9.9.9" || cfg.Config.Labels["org.opencontainers.image.revision"] != "abc" {
			t.Errorf("labels: %v", cfg.Config.Labels)
		}
	}
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Fatalf("platforms %v, want linux/amd64 and linux/arm64", platforms)
	}
}

func untar(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDockerTarball(t *testing.T) {
	out := filepath.Join(t.TempDir(), "image.tar")
	o := options{archs: archFlags{"amd64": platformDir(t, "amd64", elf.EM_X86_64, "")}, caCerts: writeCerts(t), out: out, tag: "etcdguard:test", format: "docker"}
	if err := run(o); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPlatformImage(t, img, "amd64")
}

// TestRefused: binaries the image cannot run are refused when it is built, not found out
// during an outage.
func TestRefused(t *testing.T) {
	certs := writeCerts(t)
	for _, tc := range []struct {
		name    string
		archs   archFlags
		format  string
		wantErr string
	}{
		{"wrong arch", archFlags{"amd64": platformDir(t, "amd64", elf.EM_X86_64, ""), "arm64": platformDir(t, "arm64", elf.EM_X86_64, "")}, "oci",
			"for linux/arm64 is built for EM_X86_64: build it with GOOS=linux GOARCH=arm64"},
		{"dynamic etcdctl", archFlags{"amd64": platformDir(t, "amd64", elf.EM_X86_64, "etcdctl")}, "oci",
			"etcdctl for linux/amd64 is dynamically linked (needs an ELF interpreter)"},
		{"missing binaries", archFlags{"amd64": t.TempDir()}, "oci", "reading etcdguard for linux/amd64"},
		{"two archs in a docker tarball", archFlags{"amd64": "a", "arm64": "b"}, "docker", "a docker tarball holds one platform"},
		{"no arch", archFlags{}, "oci", "no -arch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "image.tar")
			err := run(options{archs: tc.archs, caCerts: certs, out: out, tag: "etcdguard:test", format: tc.format})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused build left %s behind", out)
			}
		})
	}
}

func TestArchFlag(t *testing.T) {
	a := archFlags{}
	for _, bad := range []string{"amd64", "386=dir", "amd64="} {
		if err := a.Set(bad); err == nil {
			t.Errorf("-arch %s accepted", bad)
		}
	}
	if err := a.Set("arm64=d"); err != nil {
		t.Fatal(err)
	}
	if err := a.Set("arm64=e"); err == nil {
		t.Error("-arch arm64 accepted twice")
	}
}
