// Command image builds etcdguard's container image without Docker or a base image from a
// registry (none is reachable here): an empty base with Debian's CA bundle and a non-root
// user, etcdctl and etcdutl of the etcd version in our go.mod at /usr/local/bin (so the
// restore runbook has them on a host whose API is down), and etcdguard at /etcdguard (the
// static pod runs "/etcdguard"). No shell: nothing in it but the three static binaries.
//
// `make image` writes one platform as a Docker tarball (`docker load`); `make release` writes
// an OCI image layout tarball holding a multi-arch index of linux/amd64 and linux/arm64
// (`skopeo copy --all oci-archive:... docker://...`, `docker load`, `podman load`).
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const nonRoot = 65532 // distroless's "nonroot"

// binaries are the files every platform directory must hold, and where they go in the image.
var binaries = []struct{ file, path string }{
	{"etcdguard", "etcdguard"},
	{"etcdctl", "usr/local/bin/etcdctl"},
	{"etcdutl", "usr/local/bin/etcdutl"},
}

// machines maps the GOARCH values we release to the ELF machine their binaries must have.
var machines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// archFlags collects -arch ARCH=DIR.
type archFlags map[string]string

func (a archFlags) String() string { return fmt.Sprint(map[string]string(a)) }
func (a archFlags) Set(s string) error {
	arch, dir, ok := strings.Cut(s, "=")
	if _, known := machines[arch]; !ok || !known || dir == "" {
		return fmt.Errorf("want ARCH=DIR with ARCH amd64 or arm64, got %q", s)
	}
	if _, dup := a[arch]; dup {
		return fmt.Errorf("-arch %s given twice", arch)
	}
	a[arch] = dir
	return nil
}

type options struct {
	archs    archFlags // GOARCH -> directory with etcdguard, etcdctl and etcdutl
	caCerts  string
	out      string
	tag      string
	format   string // docker or oci
	version  string
	revision string
}

func main() {
	o := options{archs: archFlags{}}
	flag.Var(o.archs, "arch", "ARCH=DIR: a directory holding static etcdguard, etcdctl and etcdutl built for linux/ARCH (repeat per platform)")
	flag.StringVar(&o.caCerts, "cacerts", "/etc/ssl/certs/ca-certificates.crt", "CA bundle (Debian's ca-certificates)")
	flag.StringVar(&o.out, "out", "build/etcdguard-image.tar", "tarball to write")
	flag.StringVar(&o.tag, "tag", "etcdguard:dev", "image reference recorded in the tarball")
	flag.StringVar(&o.format, "format", "docker", "docker: one platform, a `docker load` tarball; oci: an OCI image layout tarball with a multi-arch index")
	flag.StringVar(&o.version, "version", "", "org.opencontainers.image.version label")
	flag.StringVar(&o.revision, "revision", "", "org.opencontainers.image.revision label")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Println("wrote", o.out, "as", o.tag)
}

func run(o options) error {
	if len(o.archs) == 0 {
		return errors.New("no -arch ARCH=DIR given")
	}
	if o.format != "docker" && o.format != "oci" {
		return fmt.Errorf("unknown -format %q: use docker or oci", o.format)
	}
	if o.format == "docker" && len(o.archs) != 1 {
		return errors.New("a docker tarball holds one platform: give one -arch, or -format oci")
	}
	certs, err := os.ReadFile(o.caCerts)
	if err != nil {
		return fmt.Errorf("reading the CA bundle: %w (apt-get install ca-certificates)", err)
	}
	ref, err := name.NewTag(o.tag)
	if err != nil {
		return fmt.Errorf("-tag %q: %w", o.tag, err)
	}
	labels := map[string]string{"org.opencontainers.image.source": "https://github.com/etcdguard/etcdguard", "org.opencontainers.image.title": "etcdguard"}
	if o.version != "" {
		labels["org.opencontainers.image.version"] = o.version
	}
	if o.revision != "" {
		labels["org.opencontainers.image.revision"] = o.revision
	}
	images := map[string]v1.Image{}
	for arch, dir := range o.archs {
		bins := map[string][]byte{}
		for _, b := range binaries {
			data, err := os.ReadFile(filepath.Join(dir, b.file))
			if err != nil {
				return fmt.Errorf("reading %s for linux/%s: %w", b.file, arch, err)
			}
			bins[b.file] = data
		}
		if images[arch], err = build(arch, bins, certs, labels); err != nil {
			return err
		}
	}
	if o.format == "docker" {
		for _, img := range images {
			return tarball.WriteToFile(o.out, ref, img)
		}
	}
	return writeOCIArchive(o.out, ref, index(images))
}

// checkBinary refuses a file that is not a static ELF executable for arch: an image whose
// etcdctl is for the wrong CPU or needs a libc it does not have fails only when the runbook
// needs it, during an outage.
func checkBinary(file, arch string, data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s for linux/%s is not an ELF binary: %w", file, arch, err)
	}
	defer f.Close()
	if f.Machine != machines[arch] {
		return fmt.Errorf("%s for linux/%s is built for %v: build it with GOOS=linux GOARCH=%s", file, arch, f.Machine, arch)
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("reading %s's dynamic section: %w", file, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			libs = append(libs, "an ELF interpreter")
		}
	}
	if len(libs) > 0 {
		return fmt.Errorf("%s for linux/%s is dynamically linked (needs %s) and the image has no libc: build it with CGO_ENABLED=0", file, arch, strings.Join(libs, ", "))
	}
	return nil
}

type file struct {
	name string
	mode int64
	uid  int
	data []byte
	dir  bool
}

// build makes one platform's image from the three binaries: reproducible layers (fixed
// times, root-owned files) in the order that changes least often first, so a new etcdguard
// release shares the base and etcd layers with the previous one.
func build(arch string, bins map[string][]byte, certs []byte, labels map[string]string) (v1.Image, error) {
	for _, b := range binaries {
		if err := checkBinary(b.file, arch, bins[b.file]); err != nil {
			return nil, err
		}
	}
	base := []file{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonRoot, nonRoot)},
		{name: "etc/group", mode: 0o644, data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", nonRoot)},
		{name: "etc/ssl/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: certs},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, uid: nonRoot, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "usr/", mode: 0o755, dir: true},
		{name: "usr/local/", mode: 0o755, dir: true},
		{name: "usr/local/bin/", mode: 0o755, dir: true},
	}
	etcdTools := []file{
		{name: "usr/local/bin/etcdctl", mode: 0o755, data: bins["etcdctl"]},
		{name: "usr/local/bin/etcdutl", mode: 0o755, data: bins["etcdutl"]},
	}
	self := []file{{name: "etcdguard", mode: 0o755, data: bins["etcdguard"]}}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, files := range [][]file{base, etcdTools, self} {
		layer, err := tarLayer(files)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return nil, err
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Config.Entrypoint = []string{"/etcdguard"}
	cfg.Config.Cmd = []string{"daemon"}
	cfg.Config.User = fmt.Sprintf("%d:%d", nonRoot, nonRoot)
	cfg.Config.Env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		"HOME=/home/nonroot",
	}
	cfg.Config.WorkingDir = "/"
	cfg.Config.Labels = labels
	return mutate.ConfigFile(img, cfg)
}

func tarLayer(files []file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.uid, ModTime: epoch, Size: int64(len(f.data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("adding %s to a layer: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("adding %s to a layer: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	// Compressed caching: the digest and the write would otherwise gzip the binaries twice.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}

// index puts one image per architecture into an OCI image index, in a fixed order.
func index(images map[string]v1.Image) v1.ImageIndex {
	archs := make([]string, 0, len(images))
	for arch := range images {
		archs = append(archs, arch)
	}
	sort.Strings(archs)
	var adds []mutate.IndexAddendum
	for _, arch := range archs {
		adds = append(adds, mutate.IndexAddendum{Add: images[arch], Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...)
}

// writeOCIArchive writes an OCI image layout whose index.json points at the multi-arch
// index under ref's name (as `docker buildx --output type=oci` does), tarred with fixed
// times and order.
func writeOCIArchive(out string, ref name.Tag, idx v1.ImageIndex) error {
	dir, err := os.MkdirTemp(filepath.Dir(out), ".oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("writing the OCI layout: %w", err)
	}
	err = p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          ref.Name(),
		"org.opencontainers.image.ref.name": ref.TagStr(),
	}))
	if err != nil {
		return fmt.Errorf("writing the image index: %w", err)
	}
	var names []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		names = append(names, path)
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(names)
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	for _, path := range names {
		if err := addFile(tw, dir, path); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func addFile(tw *tar.Writer, root, path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	rel, _ := filepath.Rel(root, path)
	h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Size: fi.Size()}
	if fi.IsDir() {
		h.Name, h.Mode, h.Typeflag, h.Size = h.Name+"/", 0o755, tar.TypeDir, 0
		return tw.WriteHeader(h)
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(tw, src)
	return err
}
