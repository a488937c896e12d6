#!/usr/bin/env bash
# scripts/release.sh release|image, run by `make release` and `make image` (which pass VERSION,
# COMMIT, DATE and the -X LDFLAGS that stamp them).
#
# release: static (CGO_ENABLED=0, -trimpath) etcdguard for linux/amd64 and linux/arm64 into
#   build/release/etcdguard-$VERSION-linux-$ARCH, the multi-arch OCI image as
#   build/release/etcdguard-$VERSION-image.oci.tar, and build/release/SHA256SUMS over them
#   (`cd build/release && sha256sum -c SHA256SUMS`).
# image: the host's platform only, as a `docker load` tarball in build/etcdguard-image.tar.
#
# Both images carry etcdctl and etcdutl built from the etcd modules in our go.mod, the same
# version etcdguard embeds (`etcdguard version -o json` prints it as etcd_client).
set -euo pipefail

mode="${1:?usage: release.sh release|image}"
: "${VERSION:?set by make}" "${COMMIT:?set by make}" "${DATE:?set by make}" "${LDFLAGS:?set by make}"
IMAGE_REPO="${IMAGE_REPO:-ghcr.io/etcdguard/etcdguard}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
t0=$SECONDS

# build_arch ARCH DIR: the three static binaries for linux/ARCH into DIR.
build_arch() {
	local arch="$1" dir="$2"
	mkdir -p "$dir"
	export CGO_ENABLED=0 GOOS=linux GOARCH="$arch"
	go build -trimpath -ldflags "-s -w $LDFLAGS" -o "$dir/etcdguard" ./cmd/etcdguard
	go build -trimpath -ldflags "-s -w" -o "$dir/etcdctl" go.etcd.io/etcd/etcdctl/v3
	go build -trimpath -ldflags "-s -w" -o "$dir/etcdutl" go.etcd.io/etcd/etcdutl/v3
	unset CGO_ENABLED GOOS GOARCH
	echo "built linux/$arch binaries in $dir ($((SECONDS - t0))s)"
}

case "$mode" in
image)
	arch="$(go env GOARCH)"
	rm -rf build/image
	build_arch "$arch" "build/image/$arch"
	go run ./internal/tools/image -format docker -arch "$arch=build/image/$arch" \
		-tag "etcdguard:$VERSION" -version "$VERSION" -revision "$COMMIT" -out build/etcdguard-image.tar
	;;
release)
	out=build/release
	rm -rf "$out" build/release-bin
	mkdir -p "$out"
	for arch in amd64 arm64; do
		build_arch "$arch" "build/release-bin/$arch"
		cp "build/release-bin/$arch/etcdguard" "$out/etcdguard-$VERSION-linux-$arch"
	done
	go run ./internal/tools/image -format oci -arch amd64=build/release-bin/amd64 -arch arm64=build/release-bin/arm64 \
		-tag "$IMAGE_REPO:$VERSION" -version "$VERSION" -revision "$COMMIT" -out "$out/etcdguard-$VERSION-image.oci.tar"
	(cd "$out" && sha256sum -- etcdguard-* >SHA256SUMS && sha256sum --quiet -c SHA256SUMS)
	# The host's own binary must run and say what it is.
	host="$out/etcdguard-$VERSION-linux-$(go env GOARCH)"
	if [[ -x "$host" ]]; then
		got="$("$host" --version)"
		[[ "$got" == "etcdguard $VERSION "* ]] || { echo "release.sh: $host --version says \"$got\", want etcdguard $VERSION" >&2; exit 1; }
	fi
	echo "release $VERSION in $out/ ($((SECONDS - t0))s):"
	ls -l "$out"
	;;
*)
	echo "usage: release.sh release|image" >&2
	exit 2
	;;
esac
