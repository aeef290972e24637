#!/usr/bin/env bash
# N pull requests at once: `prpod run` (backend native) for 1, then 4, then 8 different PRs of one
# repository started together on the world, each PR with its own commit, namespace, release and
# deploy lock. Prints, per round, the wall time of the round, each run's time and prpod's own
# peak RSS (VmHWM of the prpod process, read from /proc while it runs: Helm and git, its
# children, are not in it), and how the time per PR grows with N.
#
# Every run must exit 0 and deploy its own release into its own namespace without waiting for
# or taking over another run's lock; the script fails otherwise, printing that run's stderr.
# Each round opens new PRs (first installs: namespace, pull Secret, Lease, helm install), after a
# warm-up run that fills the clone and plugin caches; the namespaces are deleted at the end.
#
# usage: bench/concurrent.sh [COUNTS="1 4 8"]      (from the repository root, world up)
#        PRPOD=path/to/prpod skips the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${1:-1 4 8}
eval "$(scripts/dev-env env)"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

if [ -z "${PRPOD:-}" ]; then
  echo "== building prpod (release)"
  cargo build -q --release -p prpod
  PRPOD="${CARGO_TARGET_DIR:-$PWD/target}/release/prpod"
fi

# --- the app: examples/hello-web, one PR branch per run, each with its own commit -------------
NAME=prpod-concurrent-$$
REPO=bench/$NAME
mkdir -p "$W/src"
cp -a examples/hello-web/. "$W/src/"
URL=$(scripts/publish-git "$W/src" "$REPO")
export QS_GIT_USER=$PRPOD_GIT_USER QS_GIT_TOKEN=$PRPOD_GIT_TOKEN GIT_TERMINAL_PROMPT=0
git_() {
  # shellcheck disable=SC2016 # the helper expands the variables, not this shell
  git -c credential.helper= \
      -c 'credential.helper=!f() { echo username="$QS_GIT_USER"; echo password="$QS_GIT_TOKEN"; }; f' \
      -c user.name="bench" -c user.email="bench@prpod.invalid" "$@"
}
git_ clone -q "$URL" "$W/repo"
TOTAL=1   # PR 1 is the warm-up
for n in $COUNTS; do TOTAL=$((TOTAL + n)); done
for pr in $(seq 1 "$TOTAL"); do
  git -C "$W/repo" checkout -q -B "pr/$pr" origin/main
  echo "PR $pr of the concurrency bench" > "$W/repo/www/pr.txt"
  git -C "$W/repo" add www/pr.txt
  git_ -C "$W/repo" commit -q -m "PR $pr"
  git -C "$W/repo" rev-parse HEAD > "$W/sha-$pr"
done
git_ -C "$W/repo" push -q -f origin "refs/heads/pr/*:refs/heads/pr/*"

# the operator's config: the TLS registry by its loopback name (the node runs on this host and
# pulls by it too; the gateway name goes through the world's TCP relay, whose connection limit
# would be measured instead of prpod), the world's web image as the base image
cat > "$W/prpod.toml" <<EOF
[source]
username = "$PRPOD_GIT_USER"
[registry]
pull_with_push_credentials = true
[image]
repository = "$PRPOD_REGISTRY_TLS/$REPO"
build_args = { BASE = "$PRPOD_WEB_IMAGE_TLS" }
[build]
backend = "native"
[deploy]
timeout = "180s"
set = { terminationGracePeriodSeconds = 1 }
EOF
export PRPOD_HELM=$HELM PRPOD_REGISTRY_USER PRPOD_REGISTRY_PASSWORD PRPOD_REGISTRY_CA PRPOD_GIT_TOKEN
export PRPOD_CACHE_DIR=$W/cache

# run_pr PR : one `prpod run`; writes "PR EXIT MS PEAK_KIB" to $W/result-PR. prpod's VmHWM is
# read with bash builtins only (no process per sample) every 0.1 s until it exits.
run_pr() {
  local pr=$1 t0 t1 pid hwm=0 k v _ st rc
  t0=$(now_ms)
  "$PRPOD" --config "$W/prpod.toml" --output json run --repo-url "$URL" --pr "$pr" --branch "pr/$pr" \
    --base main --sha "$(cat "$W/sha-$pr")" > "$W/report-$pr.json" 2> "$W/stderr-$pr" &
  pid=$!
  while :; do
    st=""
    while read -r k v _; do
      case $k in State:) st=$v ;; VmHWM:) hwm=$v ;; esac
    done 2>/dev/null < "/proc/$pid/status" || break
    [ "$st" = Z ] && break
    sleep 0.1
  done
  rc=0; wait "$pid" || rc=$?
  t1=$(now_ms)
  echo "$pr $rc $((t1 - t0)) $hwm" > "$W/result-$pr"
}

# check_pr PR : exit 0, its own release and namespace, no lock waited for or taken over
check_pr() {
  local pr=$1 ns=$NAME-pr-$1
  read -r _ rc _ _ < "$W/result-$pr"
  if [ "$rc" != 0 ]; then
    echo "PR $pr failed (exit $rc):" >&2; cat "$W/stderr-$pr" >&2; return 1
  fi
  python3 - "$W/report-$pr.json" "$ns" <<'P' || { cat "$W/stderr-$pr" >&2; return 1; }
import json, sys
r, ns = json.load(open(sys.argv[1])), sys.argv[2]
rel = r.get("release") or {}
assert rel.get("name") == ns and rel.get("namespace") == ns, f"release {rel.get('name')} in {rel.get('namespace')}, expected {ns}"
assert r.get("revision") == 1, f"revision {r.get('revision')}: another run deployed this release too"
P
  local lock='held by|waiting for .*lock|lock .*wait|took over|taken over'
  if grep -qiE "$lock" "$W/stderr-$pr"; then
    echo "PR $pr waited for or took over a deploy lock:" >&2; grep -iE "$lock" "$W/stderr-$pr" >&2; return 1
  fi
}

echo "== warm-up: PR 1 (fills the clone and plugin caches; not counted)"
run_pr 1; check_pr 1
NEXT=2
: > "$W/summary"
for n in $COUNTS; do
  prs=$(seq "$NEXT" $((NEXT + n - 1))); NEXT=$((NEXT + n))
  echo "== $n PR(s) at once: $(echo "$prs" | tr '\n' ' ')"
  t0=$(now_ms)
  for pr in $prs; do run_pr "$pr" & done
  wait
  wall=$(($(now_ms) - t0))
  for pr in $prs; do check_pr "$pr"; done
  for pr in $prs; do cat "$W/result-$pr"; done | python3 -c '
import json, sys, statistics as st
n, wall = int(sys.argv[1]), int(sys.argv[2])
rows = [list(map(int, l.split())) for l in sys.stdin if l.strip()]
for pr, _, ms, kib in rows:
    phases = json.load(open(f"{sys.argv[4]}/report-{pr}.json")).get("phases", [])
    steps = " ".join("%s %.2f" % (p["name"], p["duration_ms"] / 1000) for p in phases)
    print(f"  PR {pr:>3}: {ms / 1000:6.2f} s   prpod peak RSS {kib / 1024:5.1f} MiB   ({steps})")
t = [r[2] / 1000 for r in rows]; m = [r[3] / 1024 for r in rows]
print(f"  wall {wall / 1000:.2f} s; per run median {st.median(t):.2f} s (min {min(t):.2f}, max {max(t):.2f}); "
      f"wall per PR {wall / 1000 / n:.2f} s; peak RSS median {st.median(m):.1f} MiB, max {max(m):.1f} MiB")
print(f"{n} {wall} {st.median(t):.3f} {max(t):.3f} {st.median(m):.1f} {max(m):.1f}", file=open(sys.argv[3], "a"))
' "$n" "$wall" "$W/summary" "$W"
done

echo
echo "== summary (native backend; first installs; each PR its own commit, image, namespace and lock)"
python3 - "$W/summary" <<'P'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
base = float(rows[0][2])
print(f"{'N':>3} {'wall':>8} {'wall/N':>8} {'run median':>11} {'run max':>8} {'vs N=' + rows[0][0]:>9} {'peak RSS':>9}")
for n, wall, med, mx, rss, rssmax in rows:
    n, wall = int(n), int(wall) / 1000
    print(f"{n:>3} {wall:7.2f}s {wall / n:7.2f}s {float(med):10.2f}s {float(mx):7.2f}s {float(med) / base:8.2f}x {float(rssmax):6.1f}MiB")
P

for pr in $(seq 1 $((NEXT - 1))); do
  "$KUBECTL" delete namespace "$NAME-pr-$pr" --wait=false >/dev/null 2>&1 || true
done
