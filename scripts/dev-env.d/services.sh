# shellcheck shell=bash
# scripts/dev-env.d/services.sh - the world's services: THE table, and one start and one probe
# function per row. Sourced by scripts/dev-env after lib.sh and host.sh.
#
# The table drives every subcommand:
#   up        stage by stage: runs START of each row of the stage, then waits until each row's
#             PROBE passes (at most TIMEOUT s; a daemon that dies fails at once)
#   status    for each row: is its process alive (daemons), does its PROBE pass
#   down      rows in reverse order: STOP (`-`: stop the daemon's process group by its pid)
#   ports     the PORTS of every row (names of the P_* settings in lib.sh); check-down checks
#             that nothing listens on them any more
# KIND is `daemon` (a process with a pid file, started with `start NAME CMD...`) or `step` (a
# one-off; its probe says whether its result is in place).
# Adding a service: a row here, its start_ and probe_ functions below, a template if it has a
# config file, and its variables in templates/env.sh.

SERVICE_TABLE='
#NAME                   KIND   STAGE TIMEOUT PORTS                      START                     PROBE                      STOP
etcd                    daemon 1     30      P_ETCD,P_ETCD_PEER         start_etcd                probe_etcd                 -
registry-plain          daemon 1     20      P_REG_PLAIN                start_registry_plain      probe_registry_plain       -
registry-tls            daemon 1     20      P_REG_TLS                  start_registry_tls        probe_registry_tls         -
registry-token          daemon 1     20      P_REG_TOKEN                start_registry_token      probe_registry_token       -
ghcr-token-double       daemon 1     20      P_TOKEN_AUTH               start_ghcr_token_double   probe_ghcr_token_double    -
fcgiwrap                daemon 1     10      -                          start_fcgiwrap            probe_fcgiwrap             -
nginx-git               daemon 2     10      P_GIT                      start_nginx_git           probe_nginx_git            -
kube-apiserver          daemon 2     90      P_API                      start_kube_apiserver      probe_kube_apiserver       -
kube-controller-manager daemon 3     30      P_CM                       start_kube_controller     probe_kube_controller      -
kube-scheduler          daemon 3     30      P_SCHED                    start_kube_scheduler      probe_kube_scheduler       -
pause-image             step   3     60      -                          build_pause_image         probe_pause_image          -
containerd              daemon 4     20      -                          start_containerd          probe_containerd           stop_containerd
kubelet                 daemon 5     90      P_KUBELET,P_KUBELET_HZ     start_kubelet             probe_kubelet              -
kube-proxy              daemon 5     30      P_PROXY_HZ,P_PROXY_METRICS start_kube_proxy          probe_kube_proxy           stop_kube_proxy
cluster-ready           step   6     60      -                          cluster_ready             probe_cluster_ready        -
web-images              step   6     300     -                          build_web_images          probe_web_images           -
'

# rows : the table without comments, one row per line
rows() { grep -vE '^\s*(#|$)' <<<"$SERVICE_TABLE"; }
rows_reversed() { rows | tac; }
service_names() { rows | awk '{print $1}'; }
# ports [NAME] : the port numbers of one row, or of all of them
ports() {
  local name portvars v out=()
  while read -r name _ _ _ portvars _; do
    [ -z "${1:-}" ] || [ "$1" = "$name" ] || continue
    [ "$portvars" = - ] && continue
    for v in ${portvars//,/ }; do out+=("${!v}"); done
  done < <(rows)
  echo "${out[*]}"
}

# ---- registries, token issuer, git -----------------------------------------------------------
REGISTRY_HTTP_SECRET=""   # read from $SEC when the registries start
# shellcheck disable=SC2034  # (REGISTRY_HTTP_SECRET is read by render, for the registry templates)
start_registry() {  # start_registry NAME TEMPLATE
  mkdir -p "$W/registry/${1#registry-}"
  REGISTRY_HTTP_SECRET=$(cat "$SEC/registry-http-secret")
  render "$2" "$W/registry/$1.yml"
  start "$1" docker-registry serve "$W/registry/$1.yml"
}
start_registry_plain() { start_registry registry-plain registry-plain.yml; }
start_registry_tls() { start_registry registry-tls registry-tls.yml; }
start_registry_token() { start_registry registry-token registry-token.yml; }
probe_registry_plain() { curl -sf --max-time 2 -o /dev/null "http://$REG_PLAIN/v2/"; }
probe_registry_tls() { [ "$(http_code "https://$REG_TLS/v2/")" = 401 ]; }
# (the Bearer challenge, not just any 401: the token auth config is in effect)
probe_registry_token() {
  curl -s --max-time 2 -o /dev/null -D - --cacert "$SEC/registry-ca.crt" "https://$REG_TOKEN/v2/" |
    grep -qi "^www-authenticate: Bearer realm=\"$TOKEN_REALM\""
}

start_ghcr_token_double() {
  start ghcr-token-double python3 "$D/ghcr-token-double.py" --listen "127.0.0.1:$P_TOKEN_AUTH" \
    --tls-cert "$SEC/registry.crt" --tls-key "$SEC/registry.key" \
    --signing-key "$SEC/token-signing.key" --signing-cert "$SEC/token-signing.crt" \
    --users "$SEC/registry-token-users.json" --issuer "$TOKEN_ISSUER" --service "$TOKEN_SERVICE"
}
# an anonymous token request signs a (grant-nothing) token: the whole path works
probe_ghcr_token_double() { [ "$(http_code "https://127.0.0.1:$P_TOKEN_AUTH/token?service=$TOKEN_SERVICE")" = 200 ]; }

start_fcgiwrap() {
  mkdir -p "$W/git/tmp" "$S/git-repos"
  start fcgiwrap fcgiwrap -c 2 -s "unix:$W/git/fcgiwrap.sock"
}
probe_fcgiwrap() { [ -S "$W/git/fcgiwrap.sock" ]; }

start_nginx_git() {
  render nginx.conf "$W/git/nginx.conf"
  start nginx-git nginx -c "$W/git/nginx.conf" -p "$W/git/" -e "$LOGS/nginx-git.log"
}
# the git server wants credentials, and the relays reach registry A and the token issuer
probe_nginx_git() {
  [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_GIT/")" = 401 ] &&
    curl -sf --max-time 2 -o /dev/null "http://$REG_PLAIN_POD/v2/" &&
    [ "$(http_code "$TOKEN_REALM?service=$TOKEN_SERVICE")" = 200 ]
}

# ---- control plane ---------------------------------------------------------------------------
start_etcd() {
  mkdir -p "$W/etcd"
  start etcd etcd --name prpod-dev-env --data-dir "$W/etcd" \
    --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$P_ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_ETCD_PEER" \
    --initial-cluster "prpod-dev-env=http://127.0.0.1:$P_ETCD_PEER"
}
probe_etcd() { curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$P_ETCD/health"; }

start_kube_apiserver() {
  mkdir -p "$W/kube"
  start kube-apiserver "$KBIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$P_ETCD" \
    --bind-address="$POD_GW" --advertise-address="$POD_GW" --secure-port="$P_API" --insecure-port=0 \
    --tls-cert-file="$SEC/apiserver.crt" --tls-private-key-file="$SEC/apiserver.key" \
    --service-account-key-file="$SEC/sa.pub" --service-account-signing-key-file="$SEC/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --token-auth-file="$SEC/tokens.csv" \
    --authorization-mode=RBAC --service-cluster-ip-range="$SVC_CIDR" --allow-privileged=true \
    --kubelet-preferred-address-types=Hostname,InternalIP --profiling=false
  # the node's kubeconfig, for the components that follow
  kubeconfig "$W/kube/node.kubeconfig" "$SEC/kube-node-token"
}
probe_kube_apiserver() { curl_api /readyz >/dev/null; }

# In 1.20 the insecure healthz port binds to --address, whose default is 0.0.0.0: without it,
# /healthz and /metrics would answer on every interface, without authentication.
start_kube_controller() {
  start kube-controller-manager "$KBIN/kube-controller-manager" --kubeconfig="$W/kube/node.kubeconfig" \
    --service-account-private-key-file="$SEC/sa.key" --root-ca-file="$SEC/kube-ca.crt" \
    --controllers='*,-nodeipam' --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --address=127.0.0.1 --port="$P_CM" --profiling=false
}
probe_kube_controller() { curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$P_CM/healthz"; }
start_kube_scheduler() {
  start kube-scheduler "$KBIN/kube-scheduler" --kubeconfig="$W/kube/node.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 --address=127.0.0.1 --port="$P_SCHED" --profiling=false
}
probe_kube_scheduler() { curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$P_SCHED/healthz"; }

# ---- the node --------------------------------------------------------------------------------
# The pause image the node's sandboxes run: infrastructure, so built here (test fixtures such as
# the web app are built by build_web_images below). From the same source tree as the binaries.
build_pause_image() {
  local dir=$W/images/pause
  mkdir -p "$dir"
  {
    gcc -static -Os -DVERSION="v$PAUSE_TAG-prpod-dev-env" -o "$dir/pause" "$KDIR/pause.c" &&
    strip "$dir/pause" &&
    cp "$TPL/pause.Containerfile" "$dir/Containerfile" &&
    buildah --root "$W/buildah/root" --runroot "$W/buildah/runroot" --storage-driver vfs \
      bud --isolation chroot --cni-config-dir "$W/buildah/cni" -q -t "$PAUSE_IMAGE" "$dir" &&
    buildah --root "$W/buildah/root" --runroot "$W/buildah/runroot" --storage-driver vfs \
      push -q --tls-verify=false "$PAUSE_IMAGE"
  } >>"$LOGS/pause-image.log" 2>&1 || { tail_log pause-image; die "building/pushing the pause image failed"; }
}
probe_pause_image() {
  curl -sf --max-time 2 -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$REG_PLAIN/v2/pause/manifests/$PAUSE_TAG"
}

start_containerd() {
  # shellcheck disable=SC2034  # (HOST is read by render, for the hosts-*.toml templates)
  local C=$W/containerd HOST r
  mkdir -p "$C"/{root,state,opt,runc} "$W/cni"/{bin,net.d,ipam}
  # how the node reaches each registry (by both of its names); the node holds no credentials:
  # B and C want an imagePullSecret, as private registries do
  for r in "$REG_PLAIN" "$REG_PLAIN_POD"; do
    mkdir -p "$C/certs.d/$r"; HOST=$r render hosts-http.toml "$C/certs.d/$r/hosts.toml"
  done
  for r in "$REG_TLS" "$REG_TLS_POD" "$REG_TOKEN" "$REG_TOKEN_POD"; do
    mkdir -p "$C/certs.d/$r"; HOST=$r render hosts-https.toml "$C/certs.d/$r/hosts.toml"
  done
  # safety net: images of any other registry (docker.io/nginx, ghcr.io/...) resolve against the
  # local plain registry, never the internet
  for r in docker.io _default; do
    mkdir -p "$C/certs.d/$r"; cp "$C/certs.d/$REG_PLAIN/hosts.toml" "$C/certs.d/$r/hosts.toml"
  done
  render containerd.toml "$C/config.toml"
  cp /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback "$W/cni/bin/"
  render cni.conflist "$W/cni/net.d/10-prpod-dev-env.conflist"
  start containerd containerd --config "$C/config.toml"
}
probe_containerd() { [ -S "$W/containerd/containerd.sock" ]; }
stop_containerd() {
  local C=$W/containerd t p
  # the world's etcd is wiped by `down`, so there is no need to drain pods through the API:
  # kill their containers directly (the kubelet is stopped by now)
  if [ -S "$C/containerd.sock" ] && alive containerd; then
    local CTR=(ctr -a "$C/containerd.sock" -n k8s.io)
    for t in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task kill -s SIGKILL "$t" 2>/dev/null || true; done
    for _ in $(seq 1 30); do [ -z "$("${CTR[@]}" task ls -q 2>/dev/null | head -1)" ] && break
      for t in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task delete -f "$t" >/dev/null 2>&1 || true; done; sleep 0.1; done
  fi
  stop containerd
  # shims of our containerd (they carry its socket in their arguments)
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $C/containerd.sock" || true); do
    kill -KILL "$p" 2>/dev/null || true; echo "shim $p" >> "$S/stopped-pids"
  done
}

start_kubelet() {
  mkdir -p "$W/kubelet"/{pki,volume-plugins,seccomp} "$W/kube"
  render kubelet.yaml "$W/kube/kubelet-config.yaml"
  kubeconfig "$W/kube/kubelet.kubeconfig" "$SEC/kube-node-token"
  # AWS_EC2_METADATA_DISABLED: no probe of 169.254.169.254 by the in-tree ECR credential provider;
  # --node-ip on our bridge: no DNS lookup of the node name, no use of the machine's uplink address
  start kubelet env AWS_EC2_METADATA_DISABLED=true "$KBIN/kubelet" \
    --config="$W/kube/kubelet-config.yaml" --kubeconfig="$W/kube/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$W/containerd/containerd.sock" \
    --runtime-request-timeout=5m --root-dir="$W/kubelet" --cert-dir="$W/kubelet/pki" \
    --seccomp-profile-root="$W/kubelet/seccomp" --pod-infra-container-image="$PAUSE_IMAGE" \
    --hostname-override="$NODE_NAME" --node-ip="$POD_GW" --v=1
}
probe_kubelet() {
  curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$P_KUBELET_HZ/healthz" &&
    [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

start_kube_proxy() {
  start kube-proxy "$KBIN/kube-proxy" --kubeconfig="$W/kube/node.kubeconfig" --proxy-mode=iptables \
    --hostname-override="$NODE_NAME" --bind-address="$POD_GW" --cluster-cidr="$POD_CIDR" --masquerade-all \
    --healthz-bind-address="127.0.0.1:$P_PROXY_HZ" --metrics-bind-address="127.0.0.1:$P_PROXY_METRICS" \
    --nodeport-addresses="127.0.0.1/32,$POD_GW/32" \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --iptables-min-sync-period=0s
  # (min sync 0: a Service answers as soon as its endpoints change, not up to 1 s later; a test
  # that curls a ClusterIP right after its pod is Ready otherwise races kube-proxy)
}
probe_kube_proxy() { curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$P_PROXY_HZ/healthz"; }
stop_kube_proxy() {
  [ -f "$W/pids/kube-proxy.pid" ] || return 0
  stop kube-proxy
  [ -x "$KBIN/kube-proxy" ] && { "$KBIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || true; }
  # --cleanup (v1.20) leaves the canary and mark chains
  local t c ipt
  for ipt in iptables ip6tables; do for t in nat filter mangle; do
    for c in KUBE-PROXY-CANARY KUBE-KUBELET-CANARY KUBE-MARK-DROP KUBE-MARK-MASQ; do
      "$ipt" -t "$t" -F "$c" 2>/dev/null || true; "$ipt" -t "$t" -X "$c" 2>/dev/null || true
    done
  done; done
}

# ---- the cluster as tests need it ------------------------------------------------------------
# kube-proxy prepended its jumps (its first sync is done once the node is Ready): put our guards
# back on top
cluster_ready() { guard_rules; }
# the `kubernetes` endpoints point at the gateway, and the token controller has made the default
# ServiceAccount's token Secret (pods in `default` can be created); the guard rules are in place
probe_cluster_ready() {
  [ "$(kc get endpoints kubernetes -o jsonpath='{.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}')" = "$POD_GW:$P_API" ] &&
    kc get secret -n default -o name | grep -q 'default-token' &&
    guard_rules_present
}

# ---- what the world's users find in it -------------------------------------------------------
# The web app image on registries A, B and C, as $PRPOD_WEB_IMAGE_{PLAIN,TLS,TOKEN}: the base
# image of the quick start, the benches and the tests. busybox-static's `httpd` in a FROM scratch
# image: `GET /` answers $WEB_BODY; `GET /cgi-bin/greeting` answers the container's GREETING
# variable, so a test can tell its own pod from another; busybox's applets (`sh`, `wget` with
# `ssl_client`) make it a probe pod too.
# The one implementation: `up` runs it, and prpod-test-support runs it through
# `scripts/dev-env web-images` (a no-op once done), so a world that is up has it whoever started
# it. Built once per world: the marker lives in the runtime dir, which `down` deletes with the
# registries' data; a lock serialises callers that start together.
WEB_MARKER=$W/fixtures/web-image.done
build_web_images() {
  [ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static (scripts/dev-env up installs it)"
  mkdir -p "$W/fixtures" "$LOGS"
  ( flock 7 && { [ -f "$WEB_MARKER" ] || make_web_images; } ) 7>"$W/fixtures/web-image.lock" >>"$LOGS/web-images.log" 2>&1 ||
    { tail_log web-images; die "building/pushing the web image failed (log: $LOGS/web-images.log)"; }
}
make_web_images() {
  local tmp ctx rc plain=$REG_PLAIN/$WEB_REPO:$WEB_TAG
  local B=(buildah --root "$W/buildah/root" --runroot "$W/buildah/runroot" --storage-driver vfs)
  tmp=$(mktemp -d "$W/fixtures/web-image.XXXXXX") || return 1
  ctx=$tmp/context
  # (errexit does not apply behind `||`: every step is chained)
  mkdir -p "$ctx/www/cgi-bin" "$tmp/cni" &&
  cp /bin/busybox "$ctx/busybox" &&
  printf '%s\n' "$WEB_BODY" > "$ctx/www/index.html" &&
  cat > "$ctx/www/cgi-bin/greeting" <<'CGI' &&
#!/bin/sh
printf "Content-Type: text/plain\r\n\r\n%s\n" "${GREETING:-}"
CGI
  chmod 755 "$ctx/www/cgi-bin/greeting" &&
  cat > "$ctx/Containerfile" <<EOF &&
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
EXPOSE $WEB_PORT
CMD ["/bin/busybox", "httpd", "-f", "-p", "$WEB_PORT", "-h", "/www"]
EOF
  # chroot isolation and an empty CNI dir: RUN creates no network, bridge or iptables chain
  "${B[@]}" bud --isolation chroot -q --cni-config-dir "$tmp/cni" -t "$plain" "$ctx" &&
  "${B[@]}" push -q --tls-verify=false "$plain" &&
  "${B[@]}" push -q --cert-dir "$SEC/registry-certs.d" --authfile "$SEC/registry-auth.json" \
    "$plain" "docker://$REG_TLS/$WEB_REPO:$WEB_TAG" &&
  "${B[@]}" push -q --cert-dir "$SEC/registry-certs.d" --authfile "$SEC/registry-token-auth.json" \
    "$plain" "docker://$REG_TOKEN/$WEB_REPO:$WEB_TAG" &&
  printf '%s\n' "$plain" "$REG_TLS/$WEB_REPO:$WEB_TAG" "$REG_TOKEN/$WEB_REPO:$WEB_TAG" > "$WEB_MARKER"
  rc=$?
  rm -rf "$tmp"
  return $rc
}
# (the marker is written after the last push; registry A is asked for the image itself)
probe_web_images() {
  [ -f "$WEB_MARKER" ] &&
    curl -sf --max-time 2 -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$REG_PLAIN/v2/$WEB_REPO/manifests/$WEB_TAG"
}
