#!/usr/bin/env bash
# `prpod dispatch` (the run in a Job on the world's node, from the PR job image) vs `prpod run` on
# the runner (this machine) for the same app, measured in the same run, each round a new commit
# of the PR (a warm-up round first, not counted, so every measured round upgrades the release):
#   cold  dispatch: the caches on an emptyDir (every Job starts empty);
#         run:      an empty PRPOD_CACHE_DIR every round
#   warm  dispatch: the caches on a PVC the PR's Jobs reuse (`[dispatch] cache_volume`, bound to a
#                   static hostPath PV: the node has no provisioner);
#         run:      the same PRPOD_CACHE_DIR as the round before
# Time: from the command's start to its exit 0, which for both is a deployed and verified preview
# (dispatch exits with the run's own code). Prints the medians and the ratios dispatch/run.
#
# The Job pod's peak memory is read from its cgroup under the kubelet's cgroup root
# (/sys/fs/cgroup/memory/prpod-dev-env/kubepods/..., cgroupfs driver), polled every 0.2 s while
# the pod runs: cgroup v1 `memory.max_usage_in_bytes` (the kernel's peak, page cache of the
# files the build writes included) and the highest `total_rss` of `memory.stat` seen (anonymous
# memory of prpod, git and helm); on cgroup v2 `memory.peak` and `anon`.
#
# The job image is built as the tests build it: images/pr-job/build stages it with this prpod,
# prpod's native builder builds it from the world's git server and pushes it to the plain
# registry, which the node pulls from without credentials.
#
# usage: bench/dispatch.sh [ROUNDS=3]      (from the repository root, world up)
#        PRPOD=path/to/prpod skips the release build (the same binary runs on the runner and in
#        the job image).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
eval "$(scripts/dev-env env)"
W=$(mktemp -d)
NAME=prpod-dispatch-$$
PV=$NAME-cache
cleanup() {
  for s in dispatch-cold dispatch-warm run-cold run-warm; do
    [ -f "$W/$s.pr" ] && "$KUBECTL" delete namespace "$NAME-$s-pr-$(cat "$W/$s.pr")" --wait=false >/dev/null 2>&1
  done
  "$KUBECTL" delete pv "$PV" --wait=false --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
ms() { echo $(( $(date +%s%N) / 1000000 )); }

if [ -z "${PRPOD:-}" ]; then
  echo "== building prpod (release)"
  cargo build -q --release -p prpod
  PRPOD="${CARGO_TARGET_DIR:-$PWD/target}/release/prpod"
fi
export QS_GIT_USER=$PRPOD_GIT_USER QS_GIT_TOKEN=$PRPOD_GIT_TOKEN GIT_TERMINAL_PROMPT=0
# shellcheck disable=SC2016 # the helper expands the variables, not this shell
GITC=(git -c credential.helper= -c 'credential.helper=!f() { echo username="$QS_GIT_USER"; echo password="$QS_GIT_TOKEN"; }; f')
head_of() { "${GITC[@]}" ls-remote "$1" refs/heads/main | cut -f1; }
GIT_POD_HOST=${PRPOD_GIT_URL_POD#http://}

# --- the job image, with this prpod -----------------------------------------------------------
echo "== the PR job image (images/pr-job/build, prpod build --backend native)"
images/pr-job/build "$W/job" --prpod "$PRPOD" --helm "$HELM" > "$W/job-stage.txt"
tail -1 "$W/job-stage.txt"
job_url=$(scripts/publish-git "$W/job" "bench/$NAME-job")
cat > "$W/job.toml" <<EOF
[source]
username = "$PRPOD_GIT_USER"
connect_timeout_secs = 300
stall_timeout_secs = 300
[image]
repository = "$PRPOD_REGISTRY_PLAIN_POD/bench/$NAME-job"
dockerfile = "Dockerfile"
[build]
backend = "native"
[registry]
plain_http = ["$PRPOD_REGISTRY_PLAIN_POD"]
EOF
PRPOD_GIT_TOKEN=$PRPOD_GIT_TOKEN PRPOD_CACHE_DIR=$W/job-cache "$PRPOD" --config "$W/job.toml" --output json \
  build --repo-url "$job_url" --branch main --sha "$(head_of "$job_url")" > "$W/job.json" 2> "$W/job.err" \
  || { cat "$W/job.err" >&2; exit 1; }
JOB_IMAGE=$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["image"]["repository"] + "@" + r["image"]["digest"])' "$W/job.json")
echo "job image $JOB_IMAGE"

# --- the static PV for the warm Jobs' cache PVC ----------------------------------------------
mkdir -p "$W/pv"; chmod 0777 "$W/pv"   # the pod runs as UID 65532; hostPath gets no fsGroup
"$KUBECTL" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $PV}
spec:
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: $PV
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "$W/pv", type: Directory}
EOF

# --- the app: examples/hello-web, one repository, PR and image repository per series ----------
export PRPOD_HELM=$HELM PRPOD_REGISTRY_USER PRPOD_REGISTRY_PASSWORD PRPOD_REGISTRY_CA PRPOD_GIT_TOKEN
PR_BASE=$(( 700000 + $$ % 90000 ))
setup() {  # $1 = series
  local s=$1 n
  mkdir -p "$W/$s/src"
  cp -a examples/hello-web/. "$W/$s/src/"
  rm -f "$W/$s/src/prpod.toml"
  n=$(( PR_BASE + $(printf '%s' "$s" | cksum | cut -d' ' -f1) % 1000 ))
  echo "$n" > "$W/$s.pr"
  # everything by the pod-gateway names, which this machine reaches too: both sides clone, push
  # and pull alike
  cat > "$W/$s/prpod.toml" <<EOF
[source]
username = "$PRPOD_GIT_USER"
plain_http = ["$GIT_POD_HOST"]
[image]
repository = "$PRPOD_REGISTRY_TLS_POD/bench/$NAME-$s"
build_args = { BASE = "${PRPOD_WEB_IMAGE_TLS/#$PRPOD_REGISTRY_TLS/$PRPOD_REGISTRY_TLS_POD}" }
[build]
backend = "native"
[registry]
pull_with_push_credentials = true
[deploy]
timeout = "180s"
set = { terminationGracePeriodSeconds = 1 }
[dispatch]
image = "$JOB_IMAGE"
build_time = "10m"
EOF
  if [ "$s" = dispatch-warm ]; then
    echo "cache_volume = { size = \"5Gi\", storage_class = \"$PV\" }" >> "$W/$s/prpod.toml"
  fi
  scripts/publish-git "$W/$s/src" "bench/$NAME-$s" > "$W/$s.url"
  sed -i "s#^$PRPOD_GIT_URL#$PRPOD_GIT_URL_POD#" "$W/$s.url"
}

# pod_memory JOB OUT : polls the Job's pod's memory cgroup until the pod's cgroup is gone or
# $OUT.stop exists; writes "PEAK_BYTES RSS_PEAK_BYTES" to OUT.
pod_memory() {
  local job=$1 out=$2 uid="" dir="" peak=0 rss=0 k v
  while [ -z "$uid" ] && [ ! -f "$out.stop" ]; do
    uid=$("$KUBECTL" get pods -n "$3" -l "job-name=$job" -o 'jsonpath={.items[0].metadata.uid}' 2>/dev/null || true)
    [ -n "$uid" ] || sleep 0.3
  done
  while [ -z "$dir" ] && [ ! -f "$out.stop" ]; do
    dir=$(find /sys/fs/cgroup/memory/prpod-dev-env /sys/fs/cgroup/prpod-dev-env -maxdepth 4 -type d \
      -name "pod$uid" 2>/dev/null | head -1 || true)
    [ -n "$dir" ] || sleep 0.2
  done
  while [ -n "$dir" ] && [ -d "$dir" ] && [ ! -f "$out.stop" ]; do
    if [ -f "$dir/memory.max_usage_in_bytes" ]; then
      read -r v < "$dir/memory.max_usage_in_bytes" 2>/dev/null && peak=$v
      while read -r k v; do [ "$k" = total_rss ] && [ "$v" -gt "$rss" ] && rss=$v; done < "$dir/memory.stat" 2>/dev/null
    elif [ -f "$dir/memory.peak" ]; then
      read -r v < "$dir/memory.peak" 2>/dev/null && peak=$v
      while read -r k v; do [ "$k" = anon ] && [ "$v" -gt "$rss" ] && rss=$v; done < "$dir/memory.stat" 2>/dev/null
    fi
    sleep 0.2
  done
  echo "$peak $rss" > "$out"
}

round() {  # $1 = series; appends "MS [PEAK RSS]" to $W/$1.times (unless $2 = warm-up)
  local s=$1 pr url sha t0 t1 job rc=0 mem=""
  pr=$(cat "$W/$s.pr"); url=$(cat "$W/$s.url")
  echo "round $RANDOM $(date +%s%N)" > "$W/$s/src/www/round.txt"
  scripts/publish-git "$W/$s/src" "bench/$NAME-$s" >/dev/null
  sha=$(head_of "$url")
  case $s in
    dispatch-*)
      job=prpod-pr-$pr-${sha:0:7}
      rm -f "$W/mem" "$W/mem.stop"
      pod_memory "$job" "$W/mem" "$NAME-$s-pr-$pr" &
      t0=$(ms)
      "$PRPOD" --config "$W/$s/prpod.toml" --output json dispatch --repo-url "$url" --pr "$pr" --branch main \
        --sha "$sha" > "$W/$s/report.json" 2> "$W/$s/stderr" || rc=$?
      t1=$(ms)
      touch "$W/mem.stop"; wait
      mem=$(cat "$W/mem")
      ;;
    run-*)
      [ "$s" = run-cold ] && rm -rf "$W/$s/cache"
      t0=$(ms)
      PRPOD_CACHE_DIR=$W/$s/cache "$PRPOD" --config "$W/$s/prpod.toml" --output json run --repo-url "$url" \
        --pr "$pr" --branch main --sha "$sha" > "$W/$s/report.json" 2> "$W/$s/stderr" || rc=$?
      t1=$(ms)
      ;;
  esac
  if [ "$rc" != 0 ]; then echo "$s failed (exit $rc):" >&2; cat "$W/$s/stderr" >&2; exit 1; fi
  if [ "${2:-}" != warm-up ]; then echo "$((t1 - t0)) $mem" >> "$W/$s.times"; fi
  printf '  %-14s %6.1f s %s\n' "$s" "$(echo "$t1 $t0" | awk '{print ($1 - $2) / 1000}')" "${2:-}"
}

SERIES="dispatch-cold dispatch-warm run-cold run-warm"
for s in $SERIES; do setup "$s"; done
echo "== warm-up: one round each (first install; fills the PVC and the runner's cache)"
for s in $SERIES; do round "$s" warm-up; done
echo "== $ROUNDS rounds, a new commit each"
for _ in $(seq 1 "$ROUNDS"); do
  for s in $SERIES; do round "$s"; done
done

echo
python3 - "$W" <<'P'
import statistics as st, sys
w = sys.argv[1]
def rows(s):
    return [list(map(int, l.split())) for l in open(f"{w}/{s}.times") if l.strip()]
med = {s: st.median(r[0] for r in rows(s)) / 1000 for s in ["dispatch-cold", "dispatch-warm", "run-cold", "run-warm"]}
n = len(rows("run-warm"))
print(f"medians of {n} rounds (each a new commit; to a verified preview)")
print(f"{'':8s} {'dispatch':>10s} {'run':>10s} {'dispatch/run':>13s}")
for c in ["cold", "warm"]:
    d, r = med[f"dispatch-{c}"], med[f"run-{c}"]
    print(f"{c:8s} {d:9.2f}s {r:9.2f}s {d / r:12.2f}x")
print(f"warm/cold: dispatch {med['dispatch-warm'] / med['dispatch-cold']:.2f}x, run {med['run-warm'] / med['run-cold']:.2f}x")
for c in ["cold", "warm"]:
    m = [r for r in rows(f"dispatch-{c}") if len(r) == 3]
    if m:
        peak = max(r[1] for r in m) / 2**20
        rss = max(r[2] for r in m) / 2**20
        print(f"Job pod memory, {c}: cgroup peak {peak:.0f} MiB (page cache included), RSS peak {rss:.0f} MiB (max of {len(m)})")
P
