#!/usr/bin/env bash
# A warm PR update, prpod vs the shell anchor, measured in the same run on the same app:
#   anchor  ../shared/bench/pr-update-baseline.sh: git fetch, buildah bud --layers, buildah push,
#           helm template, helm upgrade --install --wait (one file changed per round)
#   prpod   `prpod run` for the same change (fetch into its clone cache, build, push, chart and
#           checks, helm upgrade --install --wait, rollout verification), backend native, then
#           buildah
# and prints, as medians of ROUNDS, (a) everything before Helm starts the upgrade and (b) the
# whole update, with the ratios prpod/anchor; then `prpod plan` warm against `helm template` of
# the same chart (target: plan <= 100 ms + helm template).
#
# (a) for prpod is measured from outside: PRPOD_HELM points at a wrapper that notes the time it
# is asked to `upgrade`, then execs the real Helm.
#
# usage: bench/pr-update.sh [ROUNDS=5]      (from the repository root, world up)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
ANCHOR=${PRPOD_PR_UPDATE_ANCHOR:-../shared/bench/pr-update-baseline.sh}
# (the shared/ folder beside this checkout, as CI lays it out; no machine-specific fallback)
[ -f "$ANCHOR" ] || { echo "no shell anchor at $ANCHOR (shared/ beside this checkout): set PRPOD_PR_UPDATE_ANCHOR" >&2; exit 2; }
eval "$(scripts/dev-env env)"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
ms() { echo $(( $(date +%s%N) / 1000000 )); }

echo "== anchor: $ANCHOR $ROUNDS"
bash "$ANCHOR" "$ROUNDS" | tee "$W/anchor.txt"

echo "== building prpod (release)"
cargo build -q --release -p prpod
PRPOD=$PWD/target/release/prpod

# --- the app: examples/hello-web on the world's git server, one repo per backend -------------
export QS_GIT_USER=$PRPOD_GIT_USER QS_GIT_TOKEN=$PRPOD_GIT_TOKEN GIT_TERMINAL_PROMPT=0
# shellcheck disable=SC2016 # the helper expands the variables, not this shell
GITC=(git -c credential.helper= -c 'credential.helper=!f() { echo username="$QS_GIT_USER"; echo password="$QS_GIT_TOKEN"; }; f')
cat > "$W/helm" <<EOF
#!/bin/sh
[ "\$1" = upgrade ] && date +%s%N > "$W/helm-upgrade-started"
exec "$HELM" "\$@"
EOF
chmod +x "$W/helm"
export PRPOD_HELM=$W/helm PRPOD_REGISTRY_USER PRPOD_REGISTRY_PASSWORD PRPOD_REGISTRY_CA PRPOD_GIT_TOKEN
export PRPOD_CACHE_DIR=$W/cache

setup() {  # $1 = backend; prints the repo URL
  local b=$1
  mkdir -p "$W/$b/src"
  cp -a examples/hello-web/. "$W/$b/src/"
  rm -f "$W/$b/src/prpod.toml"
  # the base image by the push registry's name: prpod sends the registry password only there
  cat > "$W/$b/prpod.toml" <<EOF
[source]
username = "$PRPOD_GIT_USER"
[image]
repository = "$PRPOD_REGISTRY_TLS_POD/bench/prpod-$b"
build_args = { BASE = "${PRPOD_WEB_IMAGE_TLS/#$PRPOD_REGISTRY_TLS/$PRPOD_REGISTRY_TLS_POD}" }
[build]
backend = "$b"
[registry]
# the world's one htpasswd user pulls too (a real setup gives pods a read-only credential)
pull_with_push_credentials = true
[deploy]
timeout = "120s"
set = { terminationGracePeriodSeconds = 1 }
EOF
  scripts/publish-git "$W/$b/src" "bench/prpod-$b"
}

prpod_round() {  # $1 = backend, $2 = repo URL, $3 = PR number; prints "before whole" in ms
  local b=$1 url=$2 pr=$3 sha t0 t1 th
  echo "round $RANDOM $(date +%s%N)" > "$W/$b/src/www/round.txt"
  scripts/publish-git "$W/$b/src" "bench/prpod-$b" >/dev/null
  sha=$("${GITC[@]}" ls-remote "$url" refs/heads/main | cut -f1)
  rm -f "$W/helm-upgrade-started"
  t0=$(date +%s%N)
  "$PRPOD" --config "$W/$b/prpod.toml" --output json run --repo-url "$url" --pr "$pr" --branch main \
    --sha "$sha" > "$W/$b/report.json" 2> "$W/$b/stderr" || { cat "$W/$b/stderr" "$W/$b/report.json" >&2; exit 1; }
  t1=$(date +%s%N)
  th=$(cat "$W/helm-upgrade-started")
  echo "$(( (th - t0) / 1000000 )) $(( (t1 - t0) / 1000000 ))"
}

PR_BASE=$(( 900000 + $$ % 90000 ))
for b in native buildah; do
  url=$(setup "$b")
  pr=$(( PR_BASE + ${#b} ))
  echo "== prpod run, backend $b (PR $pr): warm-up round"
  prpod_round "$b" "$url" "$pr" >/dev/null
  for _ in $(seq 1 "$ROUNDS"); do prpod_round "$b" "$url" "$pr"; done > "$W/$b.times"
  echo "$pr" > "$W/$b.pr"
done

# --- prpod plan, warm, vs helm template of the same chart -----------------------------------
url=$("${GITC[@]}" ls-remote --get-url "$PRPOD_GIT_URL/bench/prpod-native.git" 2>/dev/null || echo "$PRPOD_GIT_URL/bench/prpod-native.git")
sha=$("${GITC[@]}" ls-remote "$url" refs/heads/main | cut -f1)
PLAN=("$PRPOD" --config "$W/native/prpod.toml" plan --repo-url "$url" --pr "$(cat "$W/native.pr")" --branch main --sha "$sha")
"${PLAN[@]}" --show-manifests > "$W/plan.txt" 2>/dev/null
# (files, not <(...): prpod reads input files only when they are regular files)
python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["context"]))' \
  "$W/native/report.json" > "$W/context.json"
cat > "$W/app.json" <<EOF
{"name": "hello-web", "image": {"repository": "$PRPOD_REGISTRY_TLS_POD/bench/prpod-native", "tag": "pr-1"},
 "ports": [{"name": "http", "container_port": 8080}], "replicas": 1}
EOF
"$PRPOD" plugin call chart-generator builtin:chart-webapp --context "$W/context.json" --app "$W/app.json" \
  --out "$W/chart" >/dev/null
for _ in $(seq 1 $((ROUNDS * 4))); do
  a=$(ms); "${PLAN[@]}" >/dev/null 2>&1; b=$(ms)
  "$HELM" template pr-1 "$W/chart" --namespace pr-1 >/dev/null; c=$(ms)
  echo "$((b - a)) $((c - b))"
done > "$W/plan.times"

python3 - "$W" "$ROUNDS" <<'P'
import re, statistics as st, sys
w, rounds = sys.argv[1], int(sys.argv[2])
anchor = open(f"{w}/anchor.txt").read()
a_before = float(re.search(r"before Helm median\s+([\d.]+)", anchor).group(1))
a_whole = float(re.search(r"whole\s+median\s+([\d.]+)", anchor).group(1))
print()
print(f"{'':28s} {'(a) before Helm':>16s} {'(b) whole':>10s}")
print(f"{'anchor (shell, buildah)':28s} {a_before:15.3f}s {a_whole:9.3f}s")
for b in ["native", "buildah"]:
    rows = [list(map(int, l.split())) for l in open(f"{w}/{b}.times") if l.strip()]
    before = st.median(r[0] for r in rows) / 1000
    whole = st.median(r[1] for r in rows) / 1000
    print(f"{'prpod run, ' + b:28s} {before:15.3f}s {whole:9.3f}s   ratio (a) {before / a_before:.2f}x  (b) {whole / a_whole:.2f}x")
rows = [list(map(int, l.split())) for l in open(f"{w}/plan.times") if l.strip()]
plan = st.median(r[0] for r in rows)
tmpl = st.median(r[1] for r in rows)
print(f"prpod plan (warm): median {plan:.0f} ms; helm template alone {tmpl:.0f} ms; "
      f"plan - helm template = {plan - tmpl:.0f} ms (target <= 100 ms)   ({len(rows)} runs)")
print("targets: (a) <= 0.5x native, <= 1.0x buildah; (b) <= 1.0x")
P

for b in native buildah; do
  if [ -f "$W/$b.pr" ]; then
    "$KUBECTL" delete namespace "prpod-$b-pr-$(cat "$W/$b.pr")" --wait=false >/dev/null 2>&1 || true
  fi
done
