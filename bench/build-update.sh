#!/usr/bin/env bash
# Bench: a warm PR update (one file changed) of examples/hello-web, on the service world.
#   prpod     `prpod build --backend native`: fetch into the clone cache + check out, native build,
#             push of pr-<n>, pr-<branch>, sha-<sha12> to the TLS registry (digests verified)
#   baseline  what ../shared/bench/pr-update-baseline.sh times before Helm: `git fetch` + checkout
#             (token through a credential helper), `buildah bud --layers`, `buildah push` of the
#             same commit to the same registry (one tag)
# Both build the same commit each round, into their own repositories. Prints the median of each
# step and the ratio, measured in the same run.
# usage: bench/build-update.sh [ROUNDS]   (world up; PRPOD_BIN=... to bench another binary,
#        default: a release build of this checkout)
set -euo pipefail
ROUNDS=${1:-7}
cd "$(dirname "$0")/.."
eval "$(scripts/dev-env env)"
if [ -z "${PRPOD_BIN:-}" ]; then
  cargo build --release -q -p prpod
  PRPOD_BIN=$PWD/target/release/prpod
fi
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
REG=$PRPOD_REGISTRY_TLS
NAME=bench/pr-update-$$
B=(buildah --root "$W/buildah/root" --runroot "$W/buildah/runroot" --storage-driver vfs)
AUTH=(--cert-dir "$PRPOD_REGISTRY_CERT_DIR" --authfile "$PRPOD_REGISTRY_AUTHFILE")
ms() { echo $(( $(date +%s%N) / 1000000 )); }

cp -a examples/hello-web "$W/src"
URL=$(scripts/publish-git "$W/src" "$NAME")
export GIT_TERMINAL_PROMPT=0 BENCH_GIT_USER=$PRPOD_GIT_USER BENCH_GIT_TOKEN=$PRPOD_GIT_TOKEN
# shellcheck disable=SC2016 # the helper expands the variables, not this shell
GITC=(git -c credential.helper= -c 'credential.helper=!f() { echo username=$BENCH_GIT_USER; echo password=$BENCH_GIT_TOKEN; }; f')
"${GITC[@]}" clone -q "$URL" "$W/clone"
# prpod reads the world's credentials from the environment (never argv); its own caches in $W.
export PRPOD_REGISTRY_USER PRPOD_REGISTRY_PASSWORD PRPOD_REGISTRY_CA PRPOD_GIT_USER PRPOD_GIT_TOKEN
export PRPOD_SOURCE_CACHE_DIR=$W/git-cache PRPOD_CACHE_DIR=$W/prpod-cache

round() {  # $1 = round; prints "fetch build push prpod" in ms
  echo "<p>round $1 $RANDOM @GIT_SHA@</p>" > "$W/src/www/index.html"
  scripts/publish-git "$W/src" "$NAME" >/dev/null
  local sha t0 t1 t2 t3 t4
  sha=$("${GITC[@]}" ls-remote "$URL" refs/heads/main | cut -f1)
  t0=$(ms)
  (cd "$W/clone" && "${GITC[@]}" fetch -q origin main && git checkout -q --detach FETCH_HEAD)
  t1=$(ms)
  "${B[@]}" bud -q --layers --isolation chroot "${AUTH[@]}" --build-arg "BASE=$PRPOD_WEB_IMAGE_TLS" \
    --build-arg "PRPOD_GIT_SHA=$sha" -t "$REG/bench/buildah-app:pr-1" "$W/clone" >/dev/null 2>&1
  t2=$(ms)
  "${B[@]}" push -q "${AUTH[@]}" --digestfile "$W/digest" "$REG/bench/buildah-app:pr-1" >/dev/null 2>&1
  t3=$(ms)
  "$PRPOD_BIN" --output json build --repo-url "$URL" --pr 1 --branch main --sha "$sha" \
    --image "$REG/bench/prpod-app" --backend native --build-arg "BASE=$PRPOD_WEB_IMAGE_TLS" >"$W/out.json" 2>"$W/err"
  t4=$(ms)
  echo "$((t1-t0)) $((t2-t1)) $((t3-t2)) $((t4-t3))"
}
round 0 >/dev/null   # warm: base image pulled, clone cache filled, plugins compiled
for i in $(seq 1 "$ROUNDS"); do round "$i"; done > "$W/times"
python3 - "$W/times" <<'P'
import statistics as st, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = lambda xs: st.median(xs) / 1000
for i, n in enumerate(["git fetch", "buildah bud", "buildah push"]):
    xs = [r[i] for r in rows]
    print(f"baseline {n:13s} median {med(xs):6.3f} s  (min {min(xs)/1000:.3f}, max {max(xs)/1000:.3f})")
base = [sum(r[:3]) for r in rows]
mine = [r[3] for r in rows]
print(f"baseline total         median {med(base):6.3f} s")
print(f"prpod build (native)   median {med(mine):6.3f} s  (min {min(mine)/1000:.3f}, max {max(mine)/1000:.3f})")
print(f"ratio baseline/prpod   {med(base)/med(mine):.2f}x   ({len(rows)} rounds)")
P
