# shellcheck shell=bash
# A real node for the Kubernetes test tier, sourced by scripts/kube-cluster: the kubelet built
# from the pinned k8s.io/kubernetes, Debian's containerd (CRI) and runc, Debian's CNI plugins
# (bridge, host-local, portmap, loopback), kube-proxy (iptables) and CoreDNS (built from its
# module with only the kubernetes plugin). The whole cluster runs inside a network namespace
# this script creates: the node's address, the Pod network and the Service addresses exist only
# there, and deleting the namespace removes every interface and iptables rule it made.
#
# Addresses (all inside the namespace):
#   NODE_ADDR          the node (on the namespace's loopback): API server, kubelet, CoreDNS on :53
#   REAL_POD_CIDR      Pods, on the bridge sluice-cni0 (host-local IPAM), gateway .1
#   SERVICE_CIDR       Services (kube-proxy's iptables rules); 10.96.0.1 is the API server

NODE_NAME="sluice-node-0"
NODE_ADDR="10.242.0.1"
REAL_POD_CIDR="10.88.0.0/16"
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
    if ! { ip -n "$ns" link set lo up &&
        ip -n "$ns" addr add "$NODE_ADDR/32" dev lo &&
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
    sign node "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    sign kube-proxy "/CN=system:kube-proxy" "$client"
    sign coredns "/CN=sluice-test:coredns" "$client"
    # The API server's client certificate for the kubelet (logs, exec).
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    chmod 600 "$PKI"/*.key
}

start_containerd() {
    local d="$DIR/containerd"
    mkdir -p "$d" "$DIR/cni/net.d" "$DIR/cni/ipam"
    cat >"$DIR/cni/net.d/10-sluice.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sluice-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "sluice-cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$REAL_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$DIR/cni/ipam"
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
    conf_dir = "$DIR/cni/net.d"
EOF
    spawn containerd containerd --config "$d/config.toml"
    CONTAINERD_PID=$SPAWNED_PID
    wait_until 60 "containerd" "$CONTAINERD_PID" ctr --address "$d/containerd.sock" version ||
        fail_start "containerd did not start"
}

node_ctr() { ctr --address "$DIR/containerd/containerd.sock" -n k8s.io "$@"; }

# Every docker-archive in KUBE_NODE_IMAGES, into the node's image store (nothing is pulled:
# imagePullPolicy IfNotPresent finds them; Never would too).
import_images() {
    local tar
    for tar in "$KUBE_NODE_IMAGES"/*.tar; do
        node_ctr images import --no-unpack=false "$tar" >>"$DIR/logs/images.log" 2>&1 ||
            fail_start "could not import $tar into containerd"
    done
    node_ctr images ls -q >>"$DIR/logs/images.log"
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
hostnameOverride: $NODE_NAME
bindAddress: $NODE_ADDR
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
conntrack:
  maxPerCore: 0
EOF
    spawn kube-proxy "$NODE_BIN/kube-proxy" --config="$DIR/kube-proxy.yaml" --v=1
    KUBE_PROXY_PID=$SPAWNED_PID
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
    COREDNS_PID=$SPAWNED_PID
    wait_until 60 "CoreDNS /ready" "$COREDNS_PID" \
        curl -sf --max-time 2 "http://127.0.0.1:$COREDNS_READY_PORT/ready" ||
        fail_start "CoreDNS did not become ready"
}

start_kubelet() {
    local k="$DIR/kubelet"
    mkdir -p "$k/pki"
    write_kubeconfig "$DIR/kubelet.kubeconfig" node
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
address: $NODE_ADDR
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
cgroupRoot: /$(cat "$DIR/netns")
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
imageServiceEndpoint: unix://$DIR/containerd/containerd.sock
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
        [[ -d "$c" && ! -L "${c%/}" ]] && mkdir -p "$c$(cat "$DIR/netns")" 2>/dev/null || true
    done
    spawn kubelet "$NODE_BIN/kubelet" \
        --config="$k/config.yaml" \
        --kubeconfig="$DIR/kubelet.kubeconfig" \
        --root-dir="$k/root" \
        --cert-dir="$k/pki" \
        --hostname-override="$NODE_NAME" \
        --node-ip="$NODE_ADDR" \
        --v=1
    KUBELET_PID=$SPAWNED_PID
    echo "$KUBELET_PID" >"$DIR/kubelet.pid"
}

node_still_running() {
    local name pid
    for name in CONTAINERD KUBE_PROXY COREDNS KUBELET; do
        pid="${name}_PID"
        alive "${!pid}" || fail_start "$name exited during start"
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
    # The kubelet first, so that nothing starts containers again.
    pid="$(cat "$DIR/kubelet.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] && ours "$pid" && term_and_wait "$pid"
    ns="$(cat "$DIR/netns")"
    for tries in $(seq 1 50); do
        left=0
        for pid in $(find /sys/fs/cgroup/*/"$ns" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
            kill -KILL "$pid" 2>/dev/null && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    for pid in $(grep -s -l -F -- "$DIR/containerd/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
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
        for c in /sys/fs/cgroup/*/"$ns"; do
            [[ -d "$c" ]] || continue
            find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done
        ip netns delete "$ns" 2>/dev/null || true
    fi
}
