#!/usr/bin/env bash
# The first pull of a large plugin component: `prpod plugin pull` (cold cache: manifest, config,
# the one layer, each digest checked while it streams, written to the content-addressed cache)
# vs `skopeo copy` of the same artifact to a local directory, same registry (the world's TLS +
# htpasswd registry), measured in the same run, alternating. Prints medians and the ratios.
# `plugin pull` reports the component's worlds and `prpod:plugin` version from its import and
# export names, without compiling it (it used to compile, which made a cold pull take seconds).
# Two prpod figures still: "cold" (nothing cached) and "transfer" (the OCI blobs not cached, the
# rest of the cache warm); they should now be the same.
#
# The component is the Python tag-policy that scripts/check-wit builds with componentize-py
# (about 18 MB); run scripts/check-wit first, or pass another component file.
#
# usage: bench/plugin-pull.sh [COMPONENT=target/wit-check/python_tag_policy.wasm] [ROUNDS=5]
#        (from the repo root, world up; PRPOD_BIN names the binary, default target/debug/prpod:
#        a debug build only makes prpod's side slower)
set -euo pipefail
cd "$(dirname "$0")/.."
COMPONENT=${1:-target/wit-check/python_tag_policy.wasm}
ROUNDS=${2:-5}
[ -f "$COMPONENT" ] || { echo "no component at $COMPONENT: run scripts/check-wit first" >&2; exit 2; }
PRPOD=${PRPOD_BIN:-target/debug/prpod}
[ -x "$PRPOD" ] || { echo "no prpod binary at $PRPOD: cargo build -p prpod first" >&2; exit 2; }
eval "$(scripts/dev-env env)"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
export PRPOD_REGISTRY_USER PRPOD_REGISTRY_PASSWORD PRPOD_REGISTRY_CA
export PRPOD_REGISTRY_HOST=$PRPOD_REGISTRY_TLS DOCKER_CONFIG=$WORK
REF=$PRPOD_REGISTRY_TLS/bench/plugin-pull-$$:1
PRPOD_CACHE_DIR=$WORK/push-cache "$PRPOD" plugin push "$COMPONENT" "oci://$REF" >/dev/null
S=(skopeo copy -q --src-cert-dir "$PRPOD_REGISTRY_CERT_DIR" --src-authfile "$PRPOD_REGISTRY_AUTHFILE")
measure() {  # $1 = results file; rest = command. Appends milliseconds.
  local out=$1; shift
  local s e
  s=$(date +%s%N)
  "$@" >/dev/null
  e=$(date +%s%N)
  echo "$(( (e - s) / 1000000 ))" >> "$WORK/$out"
}
for _ in $(seq "$ROUNDS"); do
  rm -rf "$WORK/cache" "$WORK/skopeo-dir"
  measure skopeo "${S[@]}" "docker://$REF" "dir:$WORK/skopeo-dir"
  measure prpod-cold env PRPOD_CACHE_DIR="$WORK/cache" "$PRPOD" plugin pull "oci://$REF"
  rm -rf "$WORK/cache/oci"
  measure prpod-transfer env PRPOD_CACHE_DIR="$WORK/cache" "$PRPOD" plugin pull "oci://$REF"
done
python3 - "$WORK" "$COMPONENT" "$ROUNDS" "$PRPOD" <<'P'
import os, statistics, sys
work, component, rounds, prpod = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
mb = os.path.getsize(component) / 1e6
med = {k: statistics.median(int(l) for l in open(f"{work}/{k}")) / 1000 for k in ["skopeo", "prpod-cold", "prpod-transfer"]}
print(f"== first pull of a {mb:.1f} MB component, TLS registry, median of {rounds} rounds ({prpod})")
for k, s in med.items():
    print(f"{k:14} {s:6.3f} s, {mb / s:.0f} MB/s")
print(f"throughput prpod/skopeo (transfer): {med['skopeo'] / med['prpod-transfer']:.2f}x   (target >= 1.0x)")
print(f"prpod cold / skopeo: {med['prpod-cold'] / med['skopeo']:.1f}x the time")
P
