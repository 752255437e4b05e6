#!/usr/bin/env bash
# A SLURM cluster on this machine, for tests and for trying the SLURM path by hand.
#
#   sudo tests/slurm/slurm_one_machine.sh up   STATE_DIR [NODES]  # munged, slurmctld, slurmd(s)
#   sudo tests/slurm/slurm_one_machine.sh down STATE_DIR          # stop only what "up" started
#
# NODES=1 (the default): one node, this host, with the daemons' usual config file, socket and
# ports. The munge key and /etc/slurm/slurm.conf are read from their fixed places; existing
# files there are backed up and restored by "down".
#
# NODES>=2: a multi-node rehearsal. Node nI runs its own slurmd in a network namespace of its
# own (Debian's slurmd 22.05 runs one slurmd per network stack: two would share a port),
# joined to this host by a veth pair on a bridge. Host and nodes all call their side "sdnet0",
# as every node of a site calls its fabric "ib0": the host (slurmctld, and the Dask scheduler
# of a run) is 10.77.0.1, node nI is 10.77.0.(I+1). A process on a node has a loopback of its
# own, so it reaches the host only over sdnet0, as on a real site. Each node gets an equal
# share of the CPUs. This cluster keeps to itself, so that it can run beside another SLURM on
# the same machine: its config is STATE_DIR/slurm.conf (use it with
# "export SLURM_CONF=STATE_DIR/slurm.conf"), it has its own munged and socket, and its daemons
# listen on ports 16817 (slurmctld) and 16818 (slurmd). It needs iproute2 and network
# namespaces; where they are unavailable "up" exits with status 3 and the reason.
#
# Needs root and Debian's slurm-wlm + munge (apt-get install slurm-wlm munge). Everything else
# it writes lives in STATE_DIR (config, spool, logs, pid files, what it created); "down" also
# removes the namespaces and links that "up" created.
set -euo pipefail
usage="usage: $0 up STATE_DIR [NODES] | down STATE_DIR"
action=${1:?$usage}
state=$(realpath -m "${2:?$usage}")
nodes=${3:-1}
NET=10.77.0 IF=sdnet0 NS=specdenoise-n  # the rehearsal's subnet, interface, namespaces

stop_pidfiles() {  # SIGTERM each daemon named by a pid file, wait for all, SIGKILL stragglers
    local f pid pids=()
    for f in "$@"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f"); rm -f "$f"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for _ in $(seq 100); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

restore() {  # put back a file we replaced, or remove the one we created
    local target=$1 backup="$state/backup/$(basename "$1")"
    if [ -f "$backup" ]; then mv -f "$backup" "$target"
    elif [ -f "$state/created/$(basename "$1")" ]; then rm -f "$target"; fi
}

remove_network() {  # what "up" created for NODES>=2: leftover processes, namespaces, links
    local ns pid link
    if [ -f "$state/created/netns" ]; then
        while read -r ns; do
            # a process still in our namespace is ours (a job's leftover): end it
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        done < "$state/created/netns"
        rm -f "$state/created/netns"
    fi
    if [ -f "$state/created/links" ]; then
        while read -r link; do ip link del "$link" 2>/dev/null || true; done < "$state/created/links"
        rm -f "$state/created/links"
    fi
}

if [ "$action" = down ]; then
    # a rehearsal's commands must reach its own controller, never another SLURM here
    [ -f "$state/slurm.conf" ] && export SLURM_CONF="$state/slurm.conf"
    if command -v scancel >/dev/null && [ -f "$state/slurmctld.pid" ]; then
        # cancel what is left and let slurmd finish it, so no slurmstepd outlives the daemons
        scancel --user=root 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_pidfiles "$state"/slurmd*.pid "$state/slurmctld.pid" "$state/munged.pid"
    remove_network
    restore /etc/slurm/slurm.conf
    restore /etc/munge/munge.key
    exit 0
fi

[ "$action" = up ] || { echo "unknown action $action" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 2; }
for cmd in munged slurmctld slurmd sbatch sinfo; do
    command -v $cmd >/dev/null || { echo "$cmd not found: apt-get install slurm-wlm munge" >&2; exit 2; }
done
[[ "$nodes" =~ ^[1-9][0-9]?$ ]] || { echo "NODES must be 1 to 99, got $nodes" >&2; exit 2; }
mkdir -p "$state"/{spool/ctld,spool/d,log,backup,created,munge}
chmod 755 "$state"

host=$(hostname -s)
cpus=$(nproc --all)  # not plain nproc: the caller may be pinned to fewer CPUs
# at most 20000 MB, and never more than the machine has (slurmd drains a node that has less)
mem_total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mem_mb=${SLURM_NODE_MEMORY_MB:-$(( mem_total_mb < 20000 ? mem_total_mb : 20000 ))}

unavailable() { echo "$*" >&2; remove_network; exit 3; }
if [ "$nodes" -gt 1 ]; then
    # the network first: where namespaces are unavailable nothing else has been started
    command -v ip >/dev/null || unavailable "no 'ip' command (apt-get install iproute2)"
    command -v nsenter >/dev/null || unavailable "no 'nsenter' command (util-linux)"
    ! ip link show "$IF" >/dev/null 2>&1 || unavailable "an interface $IF exists already"
    ip -4 -o addr show > "$state/log/addresses"
    ! grep -q " $NET\." "$state/log/addresses" || unavailable "the subnet $NET.0/24 is in use here"
    ip link add "$IF" type bridge 2>"$state/log/net.err" ||
        unavailable "cannot create a bridge: $(cat "$state/log/net.err")"
    echo "$IF" >> "$state/created/links"
    ip addr add "$NET.1/24" dev "$IF" && ip link set "$IF" up
    for i in $(seq "$nodes"); do
        ip netns add "$NS$i" 2>"$state/log/net.err" ||
            unavailable "cannot create a network namespace: $(cat "$state/log/net.err")"
        echo "$NS$i" >> "$state/created/netns"
        ip link add "sdveth$i" type veth peer name "$IF" netns "$NS$i" 2>"$state/log/net.err" ||
            unavailable "cannot create a veth pair: $(cat "$state/log/net.err")"
        echo "sdveth$i" >> "$state/created/links"
        ip link set "sdveth$i" master "$IF" up
        ip -n "$NS$i" addr add "$NET.$((i + 1))/24" dev "$IF"
        ip -n "$NS$i" link set "$IF" up
        ip -n "$NS$i" link set lo up
    done
fi

# munge: a fresh random key when none exists, daemon as the munge user, files in STATE_DIR
mkdir -p /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    touch "$state/created/munge.key"
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
chown munge:munge "$state/munge"; chmod 700 "$state/munge"
if ! su -s /bin/sh munge -c "test -w '$state/munge'"; then
    echo "the munge user cannot reach $state/munge (a parent folder is not world-searchable);" \
         "choose a STATE_DIR such as one under /tmp made with mktemp -d" >&2
    exit 2
fi
start_munged() {  # munged as the munge user, with extra options; records its pid
    su -s /bin/sh munge -c "munged --pid-file=$state/munge/munged.pid --log-file=$state/munge/munged.log $*"
    for _ in $(seq 50); do [ -s "$state/munge/munged.pid" ] && break; sleep 0.1; done
    cp "$state/munge/munged.pid" "$state/munged.pid"
}
if [ "$nodes" = 1 ]; then
    mkdir -p /run/munge; chown munge:munge /run/munge
    # one answering on the default socket is used (not any munged: a rehearsal's has its own)
    munge -n -S /run/munge/munge.socket.2 >/dev/null 2>&1 || start_munged
    auth_info=""
else
    # the socket's folder must be searchable by all (munged refuses it otherwise)
    mkdir -p "$state/munge-socket"; chown munge:munge "$state/munge-socket"
    chmod 755 "$state/munge-socket"
    socket=$state/munge-socket/munge.socket.2
    start_munged "--socket=$socket --seed-file=$state/munge/munged.seed"
    auth_info="AuthInfo=socket=$socket"
fi

if [ "$nodes" = 1 ]; then
    conf=/etc/slurm/slurm.conf
    mkdir -p /etc/slurm
    if [ -f $conf ]; then cp -f $conf "$state/backup/slurm.conf"; else touch "$state/created/slurm.conf"; fi
    ctld_host=$host
    site="SlurmdSpoolDir=$state/spool/d
SlurmdPidFile=$state/slurmd.pid
SlurmdLogFile=$state/log/slurmd.log"
    node_lines="NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    node_list=$host
else
    conf=$state/slurm.conf
    export SLURM_CONF=$conf
    ctld_host="$host($NET.1)"  # the nodes reach slurmctld over the bridge
    site="SlurmdSpoolDir=$state/spool/d-%n
SlurmdPidFile=$state/slurmd-%n.pid
SlurmdLogFile=$state/log/slurmd-%n.log
SlurmctldPort=16817
SlurmdPort=16818"
    node_cpus=$(( cpus / nodes > 0 ? cpus / nodes : 1 ))
    node_lines=$(for i in $(seq "$nodes"); do
        echo "NodeName=n$i NodeAddr=$NET.$((i + 1)) CPUs=$node_cpus RealMemory=$((mem_mb / nodes)) State=UNKNOWN"
    done)
    node_list="n[1-$nodes]"
fi
cat > "$conf" <<CONF
ClusterName=specdenoise-test
SlurmctldHost=$ctld_host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
$auth_info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
StateSaveLocation=$state/spool/ctld
SlurmctldPidFile=$state/slurmctld.pid
SlurmctldLogFile=$state/log/slurmctld.log
$site
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
$node_lines
PartitionName=debug Nodes=$node_list Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -c || { echo "slurmctld failed; see $state/log" >&2; exit 1; }
if [ "$nodes" = 1 ]; then
    slurmd -c || { echo "slurmd failed; see $state/log" >&2; exit 1; }
else
    for i in $(seq "$nodes"); do
        mkdir -p "$state/spool/d-n$i"
        # nsenter, not "ip netns exec": that gives the daemon a fresh /sys without the cgroup
        # file system, and slurmd 22.05 does not start without it
        nsenter --net="/run/netns/$NS$i" slurmd -c -N "n$i" ||
            { echo "slurmd of node n$i failed; see $state/log" >&2; exit 1; }
    done
fi
for _ in $(seq 150); do
    if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -c idle)" -ge "$nodes" ]; then
        echo "SLURM up: $(sinfo -h -o '%P %D %T %c %N')"
        exit 0
    fi
    sleep 0.2
done
echo "SLURM did not come up; logs in $state/log" >&2
exit 1
