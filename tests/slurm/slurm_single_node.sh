#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and for trying the SLURM path by hand.
#
#   sudo tests/slurm/slurm_single_node.sh up   STATE_DIR   # start munged, slurmctld, slurmd
#   sudo tests/slurm/slurm_single_node.sh down STATE_DIR   # stop only what "up" started
#
# Needs root and Debian's slurm-wlm + munge (apt-get install slurm-wlm munge). Everything it
# writes lives in STATE_DIR (config, spool, logs, pid files) except the munge key and the
# SLURM config, which the daemons read from their fixed places (/etc/munge, /etc/slurm);
# existing files there are backed up and restored by "down".
set -euo pipefail
action=${1:?usage: $0 up|down STATE_DIR}
state=$(realpath -m "${2:?usage: $0 up|down STATE_DIR}")

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

if [ "$action" = down ]; then
    if command -v scancel >/dev/null && [ -f "$state/slurmctld.pid" ]; then
        # cancel what is left and let slurmd finish it, so no slurmstepd outlives the daemons
        scancel --user=root 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_pidfiles "$state/slurmd.pid" "$state/slurmctld.pid" "$state/munged.pid"
    restore /etc/slurm/slurm.conf
    restore /etc/munge/munge.key
    exit 0
fi

[ "$action" = up ] || { echo "unknown action $action" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 2; }
for cmd in munged slurmctld slurmd sbatch sinfo; do
    command -v $cmd >/dev/null || { echo "$cmd not found: apt-get install slurm-wlm munge" >&2; exit 2; }
done
mkdir -p "$state"/{spool/ctld,spool/d,log,backup,created,munge}
chmod 755 "$state"

host=$(hostname -s)
cpus=$(nproc --all)  # not plain nproc: the caller may be pinned to fewer CPUs
# at most 20000 MB, and never more than the machine has (slurmd drains a node that has less)
mem_total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mem_mb=${SLURM_NODE_MEMORY_MB:-$(( mem_total_mb < 20000 ? mem_total_mb : 20000 ))}

# munge: a fresh random key when none exists, daemon as the munge user, socket in STATE_DIR
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
mkdir -p /run/munge; chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
    su -s /bin/sh munge -c "munged --pid-file=$state/munge/munged.pid --log-file=$state/munge/munged.log"
    for _ in $(seq 50); do [ -s "$state/munge/munged.pid" ] && break; sleep 0.1; done
    cp "$state/munge/munged.pid" "$state/munged.pid"
fi

mkdir -p /etc/slurm
for f in slurm.conf; do
    if [ -f "/etc/slurm/$f" ]; then cp -f "/etc/slurm/$f" "$state/backup/$f"; else touch "$state/created/$f"; fi
done
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=specdenoise-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -c || { echo "slurmctld failed; see $state/log" >&2; exit 1; }
slurmd -c || { echo "slurmd failed; see $state/log" >&2; exit 1; }
for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
        echo "SLURM up: $(sinfo -h -o '%P %D %T %c')"
        exit 0
    fi
    sleep 0.2
done
echo "SLURM did not come up; logs in $state/log" >&2
exit 1
