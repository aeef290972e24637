#!/usr/bin/env bash
# prpod's push vs skopeo's, same OCI layout, same registry (the world's TLS + htpasswd registry),
# measured in the same run: a push into a fresh repository, and the same push again (every blob
# already there). Prints medians of ROUNDS alternating runs, throughput, peak RSS, and ratios.
# The layout comes from the shell anchor ../shared/bench/push-baseline.sh (whose own skopeo
# figures are printed first).
#
# usage: bench/push.sh [TOTAL_MB=200] [LAYERS=5] [ROUNDS=3]     (from the repo root, world up)
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-200}; N=${2:-5}; ROUNDS=${3:-3}
ANCHOR=${PRPOD_PUSH_ANCHOR:-../shared/bench/push-baseline.sh}
# (the shared/ folder beside this checkout, as CI lays it out; no machine-specific fallback)
[ -f "$ANCHOR" ] || { echo "no shell anchor at $ANCHOR (shared/ beside this checkout): set PRPOD_PUSH_ANCHOR" >&2; exit 2; }
eval "$(scripts/dev-env env)"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
LAYOUT=$WORK/layout

echo "== anchor: $ANCHOR $MB $N"
bash "$ANCHOR" "$MB" "$N" "$LAYOUT"

echo "== building the push harness (release)"
cargo build -q --release -p prpod --example push_layout
BIN=target/release/examples/push_layout

S=(skopeo copy -q --dest-cert-dir "$PRPOD_REGISTRY_CERT_DIR" --dest-authfile "$PRPOD_REGISTRY_AUTHFILE")
# prpod reads PRPOD_REGISTRY_USER / PRPOD_REGISTRY_PASSWORD / PRPOD_REGISTRY_CA from the world's env.
export PRPOD_REGISTRY_USER PRPOD_REGISTRY_PASSWORD PRPOD_REGISTRY_CA

measure() {  # $1 = name for the results file; rest = command. Appends "seconds rss_kib".
  local out=$1; shift
  local s e
  s=$(date +%s%N)
  /usr/bin/time -f %M -o "$WORK/rss" "$@" >/dev/null
  e=$(date +%s%N)
  echo "$(( (e - s) / 1000000 )) $(cat "$WORK/rss")" >> "$WORK/$out"
}

for r in $(seq "$ROUNDS"); do
  repo=$PRPOD_REGISTRY_TLS/bench/push-$$-$r
  # skopeo: no blob-info cache, or its "fresh" push is a mount from an earlier repository.
  rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb
  measure skopeo-fresh "${S[@]}" "oci:$LAYOUT:bench" "docker://$repo-skopeo:bench"
  measure skopeo-again "${S[@]}" "oci:$LAYOUT:bench" "docker://$repo-skopeo:bench"
  measure prpod-fresh "$BIN" "$LAYOUT" "$repo-prpod" bench
  measure prpod-again "$BIN" "$LAYOUT" "$repo-prpod" bench
done

python3 - "$WORK" "$MB" "$N" "$ROUNDS" <<'P'
import statistics, sys
work, mb, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(name):
    rows = [tuple(map(int, l.split())) for l in open(f"{work}/{name}")]
    return statistics.median(r[0] for r in rows) / 1000, max(r[1] for r in rows) / 1024
res = {k: load(k) for k in ["skopeo-fresh", "skopeo-again", "prpod-fresh", "prpod-again"]}
print(f"== {mb} MB, {n} layers, TLS registry, median of {rounds} rounds (peak RSS: max)")
for k, (s, rss) in res.items():
    extra = f", {mb / s:.0f} MB/s" if k.endswith("fresh") else ""
    print(f"{k:13} {s:7.3f} s{extra}, peak RSS {rss:.1f} MiB")
sf, pf = res["skopeo-fresh"][0], res["prpod-fresh"][0]
sa, pa = res["skopeo-again"][0], res["prpod-again"][0]
print(f"throughput prpod/skopeo (fresh): {sf / pf:.2f}x   (target >= 1.0x)")
print(f"re-push time prpod/skopeo:       {pa / sa:.2f}x   (target <= 1.0x)")
print(f"peak RSS prpod/skopeo (fresh):   {res['prpod-fresh'][1]:.1f} / {res['skopeo-fresh'][1]:.1f} MiB   (target <= 64 MiB and below skopeo)")
P
