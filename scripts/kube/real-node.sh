# shellcheck shell=bash
# A real node for the Kubernetes test tier, sourced by scripts/kube-cluster: the kubelet built
# from the pinned k8s.io/kubernetes, Debian's containerd (CRI) and runc, Debian's CNI plugins
# (bridge, host-local, portmap, loopback), kube-proxy (iptables) and CoreDNS (built from its
# module with only the kubernetes plugin). The whole cluster runs inside a network namespace
# this script creates: the node's address, the Pod network and the Service addresses exist only
# there, and deleting the namespace removes every interface and iptables rule it made.
#
# One or two nodes (REAL_NODES). Addresses (all inside the namespace), node i = 0, 1:
#   node_addr i        10.242.0.(i+1), on the namespace's loopback: its kubelet; node 0's
#                      (NODE_ADDR) is also the API server's and CoreDNS's (:53)
#   pod_cidr i         10.(88+i).0.0/16: its Pods, on its own bridge sluice-cni<i>
#                      (host-local IPAM, gateway .1); Pods of the two nodes reach each
#                      other through the namespace's routing between the two bridges
#   SERVICE_CIDR       Services (kube-proxy's iptables rules); 10.96.0.1 is the API server
# Each node has its own containerd, image store, kubelet, cgroupRoot and CNI state under
# DIR/node-<i>/; kube-proxy and CoreDNS are one each (the namespace's iptables are shared).

REAL_NODES=1
NODE_ADDR="10.242.0.1"
REAL_POD_CIDR="10.88.0.0/15"
node_name() { echo "sluice-node-$1"; }
node_addr() { echo "10.242.0.$(($1 + 1))"; }
pod_cidr() { echo "10.$((88 + $1)).0.0/16"; }
node_dir() { echo "$DIR/node-$1"; }
NODE_BINARIES=(kubelet kube-proxy coredns)
NODE_BIN="$CACHE_ROOT/$K8S_VERSION/node-bin"

# ---------------------------------------------------------------------------------------------
# build

node_build_stamp() {
    {
        cat "$KUBE_MOD/k8s/go.mod" "$KUBE_MOD/k8s/go.sum" \
            "$KUBE_MOD/coredns/go.mod" "$KUBE_MOD/coredns/go.sum" "$KUBE_MOD/coredns/main.go"
        declare -f cmd_build_nodes
        go env GOVERSION 2>/dev/null || true
    } | sha256sum | cut -d' ' -f1
}

have_node_binaries() {
    local b
    [[ -f "$NODE_BIN/.stamp" && "$(cat "$NODE_BIN/.stamp")" == "$(node_build_stamp)" ]] || return 1
    for b in "${NODE_BINARIES[@]}"; do [[ -x "$NODE_BIN/$b" ]] || return 1; done
}

# The node's binaries, cached beside the control plane's (keyed by the same pins).
cmd_build_nodes() {
    if have_node_binaries; then
        echo "$NODE_BIN"
        return 0
    fi
    command -v go >/dev/null 2>&1 || die "the Go toolchain (go) is needed to build the kubelet"
    mkdir -p "$CACHE_ROOT/$K8S_VERSION"
    exec 8>"$CACHE_ROOT/$K8S_VERSION/.node-build.lock"
    flock 8
    if have_node_binaries; then
        exec 8>&-
        echo "$NODE_BIN"
        return 0
    fi
    local tmp="$CACHE_ROOT/$K8S_VERSION/node-bin.tmp.$$" start=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local goflags=(-trimpath -buildvcs=false "-ldflags=-s -w")
    log "building the kubelet and kube-proxy $K8S_VERSION and CoreDNS into $NODE_BIN"
    (
        cd "$KUBE_MOD/k8s"
        go build "${goflags[@]}" -o "$tmp/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
        cd "$KUBE_MOD/coredns"
        go build "${goflags[@]}" -o "$tmp/coredns" .
    ) >&2
    node_build_stamp >"$tmp/.stamp"
    rm -rf "$NODE_BIN"
    mv "$tmp" "$NODE_BIN"
    exec 8>&-
    log "node binaries built in $((SECONDS - start))s"
    echo "$NODE_BIN"
}

# What the node needs from Debian (installed by .ci/run): containerd, runc, the CNI plugins,
# iptables, conntrack, iproute2, nsenter.
node_prerequisites() {
    local c
    for c in containerd containerd-shim-runc-v2 ctr runc iptables conntrack ip nsenter; do
        command -v "$c" >/dev/null 2>&1 || die "the real node needs '$c' (Debian: containerd runc iptables conntrack iproute2 util-linux)"
    done
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
        die "the real node needs the CNI plugins in /usr/lib/cni (Debian: containernetworking-plugins)"
    [[ "$(id -u)" == 0 ]] || die "a real node runs containers: run as root"
    [[ -n "${KUBE_NODE_IMAGES:-}" && -f "$KUBE_NODE_IMAGES/sluice-pause.tar" ]] ||
        die "KUBE_NODE_IMAGES must name a folder with sluice-pause.tar (deploy/build-image writes it); no image can be pulled here"
}

# ---------------------------------------------------------------------------------------------
# the network namespace

# Creates the namespace (named after this run) and re-runs `start` inside it; on failure the
# namespace goes with everything else (cmd_stop).
node_enter_netns() {
    local ns="sluice-kube-$$"
    ip netns add "$ns" || die "cannot create the network namespace $ns"
    echo "$ns" >"$DIR/netns"
    # The node's address sits on the namespace's loopback (no dummy interface needed); Pods
    # reach it through the bridge's gateway. Service addresses need a route to be DNATed by
    # kube-proxy's OUTPUT rules for clients in the namespace itself (the test's curl). Pods reach Services through the bridge: bridged
    # traffic must pass iptables (kube-proxy's DNAT), and the namespace forwards.
    local i
    if ! { ip -n "$ns" link set lo up &&
        for ((i = 0; i < REAL_NODES; i++)); do ip -n "$ns" addr add "$(node_addr "$i")/32" dev lo || exit 1; done &&
        ip -n "$ns" route add "$SERVICE_CIDR" dev lo &&
        ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1 \
            net.bridge.bridge-nf-call-iptables=1 >/dev/null; }; then
        cmd_stop "$DIR"
        die "could not set up the network namespace $ns"
    fi
}

# ---------------------------------------------------------------------------------------------
# start (inside the namespace)

node_pki() {
    local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    local i
    for ((i = 0; i < REAL_NODES; i++)); do
        sign "node-$i" "/O=system:nodes/CN=system:node:$(node_name "$i")" "$client"
    done
    sign kube-proxy "/CN=system:kube-proxy" "$client"
    sign coredns "/CN=sluice-test:coredns" "$client"
    # The API server's client certificate for the kubelet (logs, exec).
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    chmod 600 "$PKI"/*.key
}

# start_containerd I: node I's containerd, its CNI configuration and state.
start_containerd() {
    local i=$1 n
    n="$(node_dir "$i")"
    local d="$n/containerd"
    mkdir -p "$d" "$n/cni/net.d" "$n/cni/ipam"
    cat >"$n/cni/net.d/10-sluice.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sluice-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "sluice-cni$i",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$(pod_cidr "$i")"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$n/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/sluice-pause:0.1.0"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
EOF
    spawn "containerd-$i" containerd --config "$d/config.toml"
    NODE_PIDS+=("$SPAWNED_PID")
    wait_until 60 "containerd of node $i" "$SPAWNED_PID" ctr --address "$d/containerd.sock" version ||
        fail_start "containerd of node $i did not start"
}

# node_ctr I ARGS: ctr against node I's containerd, in the namespace Kubernetes uses.
node_ctr() {
    local i=$1
    shift
    ctr --address "$(node_dir "$i")/containerd/containerd.sock" -n k8s.io "$@"
}

# import_images I: every docker-archive in KUBE_NODE_IMAGES into node I's image store
# (nothing is pulled: imagePullPolicy IfNotPresent finds them).
import_images() {
    local i=$1 tar
    for tar in "$KUBE_NODE_IMAGES"/*.tar; do
        node_ctr "$i" images import --no-unpack=false "$tar" >>"$DIR/logs/images.log" 2>&1 ||
            fail_start "could not import $tar into node $i's containerd"
    done
    node_ctr "$i" images ls -q >>"$DIR/logs/images.log"
}

# kube-proxy in iptables mode: Service addresses (the API server's 10.96.0.1 included) work
# inside the namespace and from every Pod.
start_kube_proxy() {
    write_kubeconfig "$DIR/kube-proxy.kubeconfig" kube-proxy
    cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $DIR/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $REAL_POD_CIDR
hostnameOverride: $(node_name 0)
bindAddress: $NODE_ADDR
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
conntrack:
  maxPerCore: 0
EOF
    spawn kube-proxy "$NODE_BIN/kube-proxy" --config="$DIR/kube-proxy.yaml" --v=1
    NODE_PIDS+=("$SPAWNED_PID")
}

# CoreDNS on the node's address: Pods get it as their nameserver from the kubelet
# (clusterDNS), and resolve <service>.<namespace>.svc.cluster.local as in any cluster.
start_coredns() {
    write_kubeconfig "$DIR/coredns.kubeconfig" coredns
    cat <<EOF | "$BIN/kubectl" apply -f - >/dev/null || fail_start "could not grant CoreDNS its permissions"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: sluice-test:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: sluice-test:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: sluice-test:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: sluice-test:coredns
EOF
    COREDNS_READY_PORT=$(free_port)
    cat >"$DIR/Corefile" <<EOF
.:53 {
    bind $NODE_ADDR
    ready 127.0.0.1:$COREDNS_READY_PORT
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $DIR/coredns.kubeconfig sluice-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
EOF
    spawn coredns "$NODE_BIN/coredns" -conf "$DIR/Corefile"
    NODE_PIDS+=("$SPAWNED_PID")
    wait_until 60 "CoreDNS /ready" "$SPAWNED_PID" \
        curl -sf --max-time 2 "http://127.0.0.1:$COREDNS_READY_PORT/ready" ||
        fail_start "CoreDNS did not become ready"
}

# start_kubelet I: node I's kubelet.
start_kubelet() {
    local i=$1 n addr cgroup
    n="$(node_dir "$i")"
    addr="$(node_addr "$i")"
    cgroup="$(cat "$DIR/netns")-$i"
    local k="$n/kubelet"
    mkdir -p "$k/pki" "$n/pod-logs"
    write_kubeconfig "$n/kubelet.kubeconfig" "node-$i"
    # Pods with dnsPolicy Default (and the kubelet's search list) read this file; the cluster's
    # nameserver comes from clusterDNS.
    echo "options ndots:5" >"$DIR/resolv.conf"
    KUBELET_PORT=$(free_port)
    # cgroup v1 is what this kind of machine has (failCgroupV1: false says it is on purpose);
    # every Pod's cgroup is under cgroupRoot, named after this run, removed by `stop`. The
    # disk is shared with the machine: eviction and image GC thresholds are set so a full
    # build disk does not evict the test's Pods (the test asserts on its own Pods' lives).
    cat >"$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $addr
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup
podLogsDir: $n/pod-logs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$n/containerd/containerd.sock
imageServiceEndpoint: unix://$n/containerd/containerd.sock
clusterDNS: [$NODE_ADDR]
clusterDomain: cluster.local
resolvConf: $DIR/resolv.conf
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 60
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
rotateCertificates: false
serverTLSBootstrap: false
shutdownGracePeriod: 0s
EOF
    local c
    for c in /sys/fs/cgroup/*/; do
        [[ -d "$c" && ! -L "${c%/}" ]] && mkdir -p "$c$cgroup" 2>/dev/null || true
    done
    spawn "kubelet-$i" "$NODE_BIN/kubelet" \
        --config="$k/config.yaml" \
        --kubeconfig="$n/kubelet.kubeconfig" \
        --root-dir="$k/root" \
        --cert-dir="$k/pki" \
        --hostname-override="$(node_name "$i")" \
        --node-ip="$addr" \
        --v=1
    NODE_PIDS+=("$SPAWNED_PID")
    echo "$SPAWNED_PID" >>"$DIR/kubelet.pids"
}

# Everything a real node needs, node by node, then what they share.
start_real_nodes() {
    local i
    NODE_PIDS=()
    for ((i = 0; i < REAL_NODES; i++)); do
        start_containerd "$i"
        import_images "$i"
    done
    start_kube_proxy
    start_coredns
    for ((i = 0; i < REAL_NODES; i++)); do
        start_kubelet "$i"
        NODES+=("$(node_name "$i")")
    done
}

node_still_running() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        alive "$pid" || fail_start "a real node's process ($pid) exited during start"
    done
}

# ---------------------------------------------------------------------------------------------
# stop

# Containers are children of containerd's shims, not of anything spawn started, and they
# outlive containerd: the kubelet is stopped (so that nothing restarts them), then every
# process in the Pods' cgroups (under cgroupRoot, named after this cluster) is killed, then
# the shims (their command line names this cluster's containerd socket). Called before and
# after stop_pids (a second call finds nothing, or what a failed start left).
node_stop_containers() {
    [[ -f "$DIR/netns" ]] || return 0
    local ns pid left tries
    # The kubelets first, so that nothing starts containers again.
    for pid in $(cat "$DIR/kubelet.pids" 2>/dev/null || true); do
        if ours "$pid"; then term_and_wait "$pid"; fi
    done
    ns="$(cat "$DIR/netns")"
    for tries in $(seq 1 50); do
        left=0
        for pid in $(find /sys/fs/cgroup/*/"$ns"-[0-9] -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
            kill -KILL "$pid" 2>/dev/null && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    for pid in $(grep -s -l -E -- "$DIR/node-[0-9]+/containerd/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        [[ "$pid" == "$$" ]] && continue
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# What containerd and the kubelet mounted under DIR (rootfs overlays, /dev/shm, volumes, the
# Pods' network namespaces), innermost first; then the Pods' cgroups; then the namespace.
node_cleanup() {
    local m
    for m in $(awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    if [[ -f "$DIR/netns" ]]; then
        local ns c
        ns="$(cat "$DIR/netns")"
        for c in /sys/fs/cgroup/*/"$ns"-[0-9]; do
            [[ -d "$c" ]] || continue
            find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done
        ip netns delete "$ns" 2>/dev/null || true
    fi
}
