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
#
# release refuses, before building anything, unless VERSION is a release tag (vX.Y.Z or
# vX.Y.Z-rc.N) on a clean HEAD and equals deploy/helm/etcdguard/Chart.yaml's appVersion: the
# shipped manifests pull that tag, so an image published under any other name is one nobody
# runs. RELEASE_SNAPSHOT=1 builds anyway, with a warning, for trying the release out.
set -euo pipefail

mode="${1:?usage: release.sh release|image}"
: "${VERSION:?set by make}" "${COMMIT:?set by make}" "${DATE:?set by make}" "${LDFLAGS:?set by make}"
IMAGE_REPO="${IMAGE_REPO:-ghcr.io/etcdguard/etcdguard}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
t0=$SECONDS

# release_refusal prints why this tree cannot be released as $VERSION, or nothing.
release_refusal() {
	local chart=deploy/helm/etcdguard/Chart.yaml app bump tag head
	bump="bump appVersion and version in $chart, the image in deploy/static-pod.yaml and the docs together (docs/release.md), commit, git tag -a"
	app="$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"#[:space:]]*\).*/\1/p' "$chart" 2>/dev/null || true)"
	if [[ -z "$app" ]]; then
		echo "no appVersion in $chart: it names the version the manifests pull"
	elif ! [[ "${VERSION%-dirty}" =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-(alpha|beta|rc)\.(0|[1-9][0-9]*))?$ ]]; then
		echo "VERSION $VERSION is not a release tag vX.Y.Z or vX.Y.Z-rc.N; $bump vX.Y.Z on a clean tree, then make release"
	elif [[ "$VERSION" == *-dirty ]]; then
		echo "VERSION $VERSION: the tree has uncommitted changes; commit or stash them and release the tagged commit"
	elif [[ "$VERSION" != "$app" ]]; then
		echo "VERSION $VERSION is not $chart's appVersion $app, the tag the manifests pull; $bump $VERSION, then make release"
	elif [[ -n "$(git status --porcelain 2>&1)" ]]; then
		echo "the tree has uncommitted or untracked files (git status); commit or remove them and release the tagged commit"
	else
		tag="$(git rev-parse -q --verify "refs/tags/$VERSION^{commit}" 2>/dev/null || true)"
		head="$(git rev-parse -q --verify HEAD 2>/dev/null || true)"
		if [[ -z "$tag" || "$tag" != "$head" || "$COMMIT" != "$head" ]]; then
			echo "tag $VERSION is not HEAD ($head, COMMIT $COMMIT); git tag -a $VERSION on the release commit and check it out, then make release"
		fi
	fi
}

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
	# Fails closed: a broken check refuses rather than releasing.
	why="$(release_refusal)" || why="the release checks failed (${why:-no reason})"
	if [[ -n "$why" ]]; then
		if [[ "${RELEASE_SNAPSHOT:-}" != 1 ]]; then
			echo "release.sh: refusing to release: $why (RELEASE_SNAPSHOT=1 make release for a test build)" >&2
			exit 1
		fi
		echo "release.sh: WARNING: RELEASE_SNAPSHOT=1, a test build not to publish: $why" >&2
	fi
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
