#!/usr/bin/env bash
# A single-node SLURM cluster on localhost (Debian's slurm-wlm), to try `LAUNCHER=slurm` on one machine
# and to test it for real. As root:
#   scripts/local_slurm.sh start     install the packages if missing, write the config, start munged,
#                                    slurmctld and slurmd; waits until the node is idle
#   scripts/local_slurm.sh status    the daemons and `sinfo`
#   scripts/local_slurm.sh stop      stop the daemons by their pid files
# Idempotent: `start` on a running cluster only checks it. It overwrites /etc/slurm/slurm.conf
# (so do not run it on a machine that is part of a real cluster). Exit status 2: SLURM cannot run here.
set -euo pipefail

STATE=/var/lib/momo-local-slurm         # pid files, logs and the controller's state
CONF=/etc/slurm/slurm.conf
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=$STATE/slurmctld.pid
SLURMD_PID=$STATE/slurmd.pid
HOST=$(hostname -s)

die() { echo "local_slurm: $*" >&2; exit 2; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available"
    echo "local_slurm: installing slurmctld slurmd slurm-client munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install of the slurm packages failed"
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    mkdir -p "$STATE"/{ctld,spool} /etc/slurm
    cat > "$CONF" <<EOF
# Written by scripts/local_slurm.sh: a single-node cluster on $HOST.
ClusterName=momo-local
SlurmctldHost=$HOST
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    alive "$MUNGE_PID" && return
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
}

wait_idle() {
    for _ in $(seq 1 30); do
        state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
        case $state in
            idle|mix|alloc) echo "local_slurm: node $HOST is $state"; return 0 ;;
            down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "the node did not become idle (see $STATE/slurmctld.log and $STATE/slurmd.log)"
}

start() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    install_packages
    if alive "$CTLD_PID" && alive "$SLURMD_PID"; then
        wait_idle
        return
    fi
    write_config
    start_munge
    alive "$CTLD_PID" || /usr/sbin/slurmctld -c -f "$CONF" || die "slurmctld did not start"
    alive "$SLURMD_PID" || /usr/sbin/slurmd -f "$CONF" || die "slurmd did not start"
    wait_idle
}

stop_pid() {
    local pid_file=$1
    alive "$pid_file" || return 0
    local pid
    pid=$(cat "$pid_file")
    kill "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$pid_file"
}

stop() {
    stop_pid "$SLURMD_PID"
    stop_pid "$CTLD_PID"
    stop_pid "$MUNGE_PID"
    echo "local_slurm: stopped"
}

status() {
    for pid_file in "$MUNGE_PID" "$CTLD_PID" "$SLURMD_PID"; do
        if alive "$pid_file"; then echo "running  $(basename "$pid_file" .pid) (pid $(cat "$pid_file"))"
        else echo "stopped  $(basename "$pid_file" .pid)"; fi
    done
    alive "$CTLD_PID" && sinfo
    return 0
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac
