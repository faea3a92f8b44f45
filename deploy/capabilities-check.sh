#!/usr/bin/env bash
# Which Linux capabilities does `svc-agent run` need? Runs the agent (static --manifests
# source) in a throwaway network namespace with a veth, as root but with only the named
# capabilities in its bounding, permitted, inheritable and ambient sets, the way a container
# runtime starts a non-privileged container whose securityContext adds exactly those.
#
#   sudo deploy/capabilities-check.sh [path/to/svc-agent]     (default target/debug/svc-agent)
#
# Everything it makes carries a unique prefix and is removed on exit: the namespace, the
# manifests directory, the pins under /sys/fs/bpf/<prefix> (`svc-agent uninstall`).
# Nothing is attached to the machine's own interfaces.
set -euo pipefail

AGENT=$(realpath "${1:-target/debug/svc-agent}")
PREFIX="svclbcap$$"
NS="$PREFIX"
BPFFS="/sys/fs/bpf/$PREFIX"
MANIFESTS=$(mktemp -d "/tmp/$PREFIX.XXXX")
LOG="$MANIFESTS/agent.log"
# The socket hooks attach to a cgroup this run creates, never to the machine's root cgroup.
CGROUP_ROOT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
CGROUP="$CGROUP_ROOT/$PREFIX"
AGENT_PID=

cleanup() {
    if [[ -n "$AGENT_PID" ]]; then kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; fi
    "$AGENT" uninstall --bpffs "$BPFFS" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rmdir "$CGROUP" 2>/dev/null || true
    rm -rf "$MANIFESTS"
}
trap cleanup EXIT

[[ $(id -u) == 0 ]] || { echo "needs root (it creates a network namespace and loads BPF)"; exit 1; }
[[ -x "$AGENT" ]] || { echo "$AGENT: not built (cargo xtask build-ebpf && cargo build -p svc-agent)"; exit 1; }

[[ -n "$CGROUP_ROOT" ]] || { echo "no cgroup2 filesystem mounted"; exit 1; }
mkdir -p "$CGROUP"
ip netns add "$NS"
ip -n "$NS" link set lo up
# A pod veth as kindnet names it: host side veth…, pod side in the same namespace here.
ip -n "$NS" link add vethcap0 type veth peer name podcap0
ip -n "$NS" link set vethcap0 up
ip -n "$NS" link set podcap0 up

cat >"$MANIFESTS/svc.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: test-cip-service, namespace: default}
spec:
  clusterIP: 10.96.211.115
  ports: [{protocol: TCP, port: 9000, targetPort: 9000}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: test-cip-service, namespace: default}
subsets:
- addresses: [{ip: 10.244.1.5, nodeName: node1}]
  ports: [{port: 9000, protocol: TCP}]
YAML

# setpriv arguments that leave exactly the capabilities "$1" (e.g. bpf,net_admin; "" = none).
caps_args() {
    local list="-all" cap
    IFS=, read -ra wanted <<<"$1"
    for cap in "${wanted[@]}"; do list="$list,+$cap"; done
    echo "--bounding-set=$list --inh-caps=$list --ambient-caps=$list"
}

# Starts the agent with capabilities "$1"; waits until it is healthy or has exited.
start_agent() {
    : >"$LOG"
    # shellcheck disable=SC2046
    nsenter --net="/run/netns/$NS" setpriv $(caps_args "$1") -- \
        "$AGENT" run --manifests "$MANIFESTS" --node-name node1 --bpffs "$BPFFS" \
        --uplink eth0 --node-ip 172.18.0.2 --pod-ifaces veth --metrics-addr 127.0.0.1:10249 \
        --cgroup "$CGROUP" \
        >"$LOG" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 100); do
        kill -0 "$AGENT_PID" 2>/dev/null || break
        if nsenter --net="/run/netns/$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/10249 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && grep -q "200 OK" <&3' 2>/dev/null \
            && ls "$BPFFS/links/" 2>/dev/null | grep -q vethcap0; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

stop_agent() {
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    local rc=0
    wait "$AGENT_PID" || rc=$?
    AGENT_PID=
    return $rc
}

# What the kernel shows, read with full privilege: the agent's effective set, tcx programs on
# the veth, the frontend in the pinned map.
report_datapath() {
    echo "    CapEff of the agent: $(capsh --decode="$(awk '/^CapEff/ {print $2}' "/proc/$AGENT_PID/status")" | cut -d= -f2)"
    # Debian bookworm's bpftool predates tcx: it prints the link type as 11 (BPF_LINK_TYPE_TCX).
    local pin prog
    for pin in "$BPFFS"/links/*; do
        prog=$(bpftool link show pinned "$pin" | grep -oE 'prog [0-9]+' | cut -d' ' -f2)
        echo "    link $(basename "$pin"): $(bpftool link show pinned "$pin" | grep -oE 'type [^ ]+' | head -1) → $(bpftool prog show id "$prog" | grep -oE 'name [a-z_]+')"
    done
    echo "    SVC_FRONTENDS: $(bpftool map dump pinned "$BPFFS/SVC_FRONTENDS" | tr -d '\n' | tr -s ' ' | cut -c1-100)"
}

case_run() {
    local caps="$1" expect="$2"
    echo "== run with capabilities {$caps}, fresh=${3:-yes} (expect: $expect)"
    if start_agent "$caps"; then
        echo "  result: loaded, pinned, attached, /healthz 200"
        report_datapath
        if stop_agent; then echo "  SIGTERM: clean exit 0"; else echo "  SIGTERM: exit $?"; fi
    else
        stop_agent || true
        echo "  result: FAILED; agent log:"
        grep -E "^Error|syscall returned|failed to|prohibited|Operation not permitted \\(os error 1\\)$" "$LOG" \
            | head -3 | sed 's/^ */    /'
    fi
}

echo "kernel $(uname -r), agent $AGENT"
case_run "bpf,net_admin,perfmon" "works"
case_run "bpf,net_admin,perfmon" "works: adopts the pinned maps and links" "no (restart over existing pins)"
echo "== uninstall with no capabilities at all"
# shellcheck disable=SC2046
if setpriv $(caps_args "") -- "$AGENT" uninstall --bpffs "$BPFFS" && [[ ! -e "$BPFFS" ]]; then
    echo "  result: pins and links removed (bpffs is owned by uid 0: plain file permissions)"
else
    echo "  result: FAILED"; "$AGENT" uninstall --bpffs "$BPFFS"
fi
case_run "bpf,net_admin" "fails: the verifier refuses pointer arithmetic without CAP_PERFMON"
"$AGENT" uninstall --bpffs "$BPFFS"
case_run "bpf,perfmon" "fails: tc programs are network programs (CAP_NET_ADMIN)"
"$AGENT" uninstall --bpffs "$BPFFS"
case_run "net_admin,perfmon" "fails: bpf() needs CAP_BPF"
"$AGENT" uninstall --bpffs "$BPFFS"
case_run "" "fails"
"$AGENT" uninstall --bpffs "$BPFFS"

echo "== bpftool map dump pinned SVC_FRONTENDS (the README's inspection command)"
start_agent "bpf,net_admin,perfmon" || { echo "  agent did not start"; exit 1; }
for caps in "" "bpf" "bpf,net_admin,perfmon" "bpf,sys_admin"; do
    # shellcheck disable=SC2046
    out=$(setpriv $(caps_args "$caps") -- bpftool map dump pinned "$BPFFS/SVC_FRONTENDS" 2>&1 | tr -d '\n' | tr -s ' ' | cut -c1-110) || true
    echo "  {$caps}: $out"
done
stop_agent || true

echo "== bpffs not mounted (private mount namespace with /sys/fs/bpf unmounted), {bpf,net_admin,perfmon}"
# shellcheck disable=SC2046
unshare --mount --propagation private bash -c "umount -l /sys/fs/bpf && \
    nsenter --net=/run/netns/$NS setpriv $(caps_args bpf,net_admin,perfmon) -- \
    timeout 5 $AGENT run --manifests $MANIFESTS --node-name node1 --bpffs /sys/fs/bpf/svc \
    --pod-ifaces veth --metrics-addr off" 2>&1 | grep -iE "error|mount|permit" | head -2 | sed 's/^/  /' || true
