#!/bin/bash
# build-kubernetes.sh DEB_VERSION OUT_DIR WORK_DIR
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy from
# Debian's `kubernetes` source package (bookworm ships the full 1.20.2 tree with vendor/), plus
# keeps build/pause/linux/pause.c for the pause image. Fetches the source through apt with a
# private sources list and lists dir, so the host's apt configuration is never touched; apt still
# checks the signed Release file, so the tarball is verified.
# Installs into OUT_DIR only when everything built (atomic rename), so an interrupted build is
# never mistaken for a cache hit.
set -euo pipefail
VER=$1 OUT=$2 WORK=$3
rm -rf "$WORK"; mkdir -p "$WORK/apt/lists/partial" "$WORK/src"
echo "deb-src http://deb.debian.org/debian bookworm main" > "$WORK/apt/sources.list"
APT=(apt-get -q -o Dir::Etc::SourceList="$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$WORK/apt/lists" -o Dir::Cache::archives="$WORK/apt")
"${APT[@]}" update
# Only the upstream (orig) tarball is used. If Debian has moved on to a newer revision of the same
# upstream version (a +deb12uN security update), take that one: its orig tarball is the same file.
(cd "$WORK" && { "${APT[@]}" source --download-only "kubernetes=$VER" || "${APT[@]}" source --download-only kubernetes; })
ORIG="$WORK/kubernetes_${VER%-*}.orig.tar.gz"
[ -f "$ORIG" ] || { echo "expected $ORIG; Debian's kubernetes source is now: $(ls "$WORK")" >&2; exit 1; }
tar xzf "$ORIG" -C "$WORK/src" --strip-components=1
cd "$WORK/src"
# GOFLAGS=-mod=vendor is implied by the tree; the Go build cache in ~/.cache/go-build speeds re-runs.
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy"
mkdir -p "$OUT.tmp/bin"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  cp "_output/bin/$b" "$OUT.tmp/bin/"
done
cp build/pause/linux/pause.c "$OUT.tmp/pause.c"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
cd /; rm -rf "$WORK"
echo "built kubernetes $VER into $OUT"
