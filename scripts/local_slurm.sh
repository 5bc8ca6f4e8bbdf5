#!/usr/bin/env bash
# A single-node SLURM cluster on localhost (Debian's slurm-wlm) with job accounting, to try
# `LAUNCHER=slurm_cpu` on one machine and to test it for real. As root:
#   scripts/local_slurm.sh start     install the packages if missing, write the configs, start munged,
#                                    MariaDB (a private instance), slurmdbd, slurmctld and slurmd;
#                                    waits until the node is idle
#   scripts/local_slurm.sh status    the daemons and `sinfo`; exit status 0 when all of them run
#   scripts/local_slurm.sh stop      stop the daemons that `start` started, by their pid files
# Idempotent: `start` on a running cluster only checks it. It overwrites /etc/slurm/slurm.conf and
# /etc/slurm/slurmdbd.conf (so do not run it on a machine that is part of a real cluster). Exit status 2:
# SLURM cannot run here.
#
# Accounting (slurmdbd on MariaDB) is what lets `sacct` report job states: submitit polls sacct and, without
# it, cannot tell a finished job from a lost one (it warns "Bypassing sacct error" at every poll).
set -euo pipefail

STATE=/var/lib/momo-local-slurm         # pid files, logs, the controller's state and the database
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
CLUSTER=momo-local
MUNGE_PID=/run/munge/munged.pid
DB_RUN=$STATE/db                        # MariaDB's own files (it runs as user mysql)
DB_DIR=$DB_RUN/data
DB_PID=$DB_RUN/mariadbd.pid
DB_SOCKET=$DB_RUN/mariadbd.sock
DB_PORT=3307                            # not MariaDB's 3306: a system instance may use it
DBD_PID=$STATE/slurmdbd.pid
CTLD_PID=$STATE/slurmctld.pid
SLURMD_PID=$STATE/slurmd.pid
STARTED=$STATE/started                  # the pid files of the daemons that `start` started
HOST=$(hostname -s)

die() { echo "local_slurm: $*" >&2; exit 2; }
say() { echo "local_slurm: $*"; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
started() { echo "$1" >> "$STARTED"; }

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || die "missing ${missing[*]} and apt-get is not available"
    say "installing slurmctld slurmd slurm-client munge slurmdbd mariadb-server (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null \
        || die "apt-get install of the slurm packages failed"
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    mkdir -p "$STATE"/{ctld,spool} /etc/slurm
    cat > "$CONF" <<EOF
# Written by scripts/local_slurm.sh: a single-node cluster on $HOST.
ClusterName=$CLUSTER
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd reads its password from here: root only.
    (umask 077; cat > "$DBD_CONF" <<EOF
# Written by scripts/local_slurm.sh: accounting for the single-node cluster, in a private MariaDB.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
PidFile=$DBD_PID
LogFile=$STATE/slurmdbd.log
EOF
    )
}

db_password() {
    [[ -s $STATE/db_password ]] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$STATE/db_password")
    cat "$STATE/db_password"
}

start_munge() {
    alive "$MUNGE_PID" && return
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    started "$MUNGE_PID"
}

start_database() {
    alive "$DB_PID" && return
    mkdir -p "$DB_DIR" && chown mysql:mysql "$DB_RUN" "$DB_DIR"
    if [[ ! -d $DB_DIR/mysql ]]; then
        mariadb-install-db --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket \
            > "$STATE/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/mariadb-install.log)"
    fi
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCKET" \
        --pid-file="$DB_PID" --port=$DB_PORT --bind-address=127.0.0.1 --innodb-buffer-pool-size=32M \
        --log-error="$DB_RUN/mariadbd.log" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 100); do [[ -S $DB_SOCKET ]] && alive "$DB_PID" && break; sleep 0.1; done
    alive "$DB_PID" || die "MariaDB did not start (see $DB_RUN/mariadbd.log)"
    started "$DB_PID"
    local pw
    pw=$(db_password)
    mariadb --socket="$DB_SOCKET" -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
        ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "could not create the accounting database"
}

start_slurmdbd() {
    alive "$DBD_PID" && return
    /usr/sbin/slurmdbd || die "slurmdbd did not start (see $STATE/slurmdbd.log)"
    started "$DBD_PID"
    for _ in $(seq 1 50); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
    sacctmgr -n show cluster >/dev/null 2>&1 || die "slurmdbd does not answer (see $STATE/slurmdbd.log)"
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr could not add cluster $CLUSTER"
    fi
}

wait_idle() {
    for _ in $(seq 1 30); do
        state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
        case $state in
            idle|mix|alloc) say "node $HOST is $state (accounting: slurmdbd)"; return 0 ;;
            down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "the node did not become idle (see $STATE/slurmctld.log and $STATE/slurmd.log)"
}

start() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    install_packages
    if alive "$CTLD_PID" && alive "$SLURMD_PID" && alive "$DBD_PID"; then
        wait_idle
        return
    fi
    write_config
    start_munge
    start_database
    start_slurmdbd
    if ! alive "$CTLD_PID"; then
        /usr/sbin/slurmctld -c -f "$CONF" || die "slurmctld did not start"
        started "$CTLD_PID"
    fi
    if ! alive "$SLURMD_PID"; then
        /usr/sbin/slurmd -f "$CONF" || die "slurmd did not start"
        started "$SLURMD_PID"
    fi
    wait_idle
}

stop_pid() {
    local pid_file=$1
    alive "$pid_file" || return 0
    local pid
    pid=$(cat "$pid_file")
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && die "pid $pid ($pid_file) did not stop"
    rm -f "$pid_file"
}

stop() {
    [[ -f $STARTED ]] || { say "nothing to stop (no daemon was started by this script)"; return 0; }
    # the reverse order of start: the node, the controller, accounting, its database, munge
    tac "$STARTED" | while read -r pid_file; do stop_pid "$pid_file"; done
    rm -f "$STARTED"
    say "stopped"
}

status() {
    local all=0
    for pid_file in "$MUNGE_PID" "$DB_PID" "$DBD_PID" "$CTLD_PID" "$SLURMD_PID"; do
        if alive "$pid_file"; then echo "running  $(basename "$pid_file" .pid) (pid $(cat "$pid_file"))"
        else echo "stopped  $(basename "$pid_file" .pid)"; all=1; fi
    done
    alive "$CTLD_PID" && sinfo
    return $all
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac
