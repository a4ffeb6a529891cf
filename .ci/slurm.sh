#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests marked `slurm` (tests/test_sweep_slurm.py) and for
# trying `src/sweep.py --backend slurm` by hand (docs/sweep.md). Debian 12 packages; run as root.
#
#   bash .ci/slurm.sh start [--no-accounting]   install (apt-get) if needed, then start munged, mariadbd + slurmdbd
#                                                (accounting, so that sacct answers; not with --no-accounting),
#                                                slurmctld, slurmd; wait until the node is idle
#   bash .ci/slurm.sh stop                      stop what `start` started, in reverse order, by the recorded PIDs
#   bash .ci/slurm.sh status                    which recorded daemons are alive; sinfo
#   bash .ci/slurm.sh running                   exit status 0 when the cluster this script started is up
#
# Every daemon runs in the foreground mode, in the background, and its PID is recorded in $STATE_DIR/pids/.
# `stop` ends only those PIDs (after checking that each is still the program that was started), so daemons this
# script did not start are never touched. A second `start` finds the recorded daemons alive and does nothing; a
# cluster that answers `sinfo` but was not started here is used as it is.
# Facts this follows (packages, slurm.conf lines, start order, times): ../shared/slurm-single-node.md.
set -euo pipefail

STATE_DIR=${ICL_CMR_SLURM_STATE:-/var/tmp/icl_cmr_slurm}
PID_DIR=$STATE_DIR/pids
LOG_DIR=$STATE_DIR/log
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by icl_cmr .ci/slurm.sh"
# Seconds a requeued job waits before it may start again (AuthInfo cred_expire; SLURM's default is 120). Short, so
# that the requeue test takes seconds; a production cluster keeps its own value.
REQUEUE_DELAY_S=${ICL_CMR_SLURM_REQUEUE_DELAY_S:-10}

say() { echo "slurm.sh: $*"; }
die() { echo "slurm.sh: error: $*" >&2; exit 1; }

# wait_for SECONDS WHAT COMMAND...: run COMMAND every 0.5 s until it succeeds
wait_for() {
    local seconds=$1 what=$2; shift 2
    local tries=$((seconds * 2))
    until "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || die "$what did not come up within ${seconds} s (logs: $LOG_DIR)"
        sleep 0.5
    done
}

# alive NAME: the recorded PID of NAME runs the program recorded with it
alive() {
    local file=$PID_DIR/$1.pid pid exe
    [ -f "$file" ] || return 1
    read -r pid exe < "$file"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]
}

# launch NAME EXE ARGS...: start EXE in the background (its own session), record its PID and executable
launch() {
    local name=$1 exe=$2; shift 2
    setsid "$exe" "$@" >>"$LOG_DIR/$name.out" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid $(readlink -f "$exe")" > "$PID_DIR/$name.pid"
}

# launch_as USER NAME EXE ARGS...: as launch, with the daemon's own user
launch_as() {
    local user=$1 name=$2 exe=$3; shift 3
    setsid setpriv --reuid="$user" --regid="$user" --init-groups "$exe" "$@" >>"$LOG_DIR/$name.out" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid $(readlink -f "$exe")" > "$PID_DIR/$name.pid"   # setpriv execs the daemon: same PID
}

install_packages() {
    local wanted="slurm-wlm munge"
    [ "$1" = yes ] && wanted="$wanted slurmdbd mariadb-server"
    local missing=""
    for package in $wanted; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    [ -z "$missing" ] && return 0
    say "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

write_configs() {
    local accounting=$1 host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    if [ -f "$DBD_CONF" ] && ! grep -qF "$MARK" "$DBD_CONF"; then
        die "$DBD_CONF exists and was not written by this script: this machine has its own SLURM set-up"
    fi
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd
    local storage="AccountingStorageType=accounting_storage/none"
    if [ "$accounting" = yes ]; then
        storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
    fi
    cat > "$CONF" <<EOF
$MARK
ClusterName=single
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$REQUEUE_DELAY_S
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
$storage
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$accounting" = yes ]; then
        cat > "$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
        chmod 600 "$DBD_CONF"
    fi
}

node_idle() { [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; }

start() {
    local accounting=yes
    case "${1:-}" in
        "") ;;
        --no-accounting) accounting=no ;;
        *) die "unknown option ${1}; usage: slurm.sh start [--no-accounting]" ;;
    esac
    [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"
    local clock=$SECONDS
    mkdir -p "$PID_DIR" "$LOG_DIR"
    if alive slurmctld && alive slurmd; then
        say "already running (started earlier by this script; PIDs in $PID_DIR): nothing to do"
        return 0
    fi
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        if timeout 20 sinfo -h >/dev/null 2>&1; then
            say "a SLURM cluster not started by this script answers sinfo: using it as it is, starting nothing"
            return 0
        fi
        die "$CONF exists and was not written by this script: this machine has its own SLURM set-up; start it, or move the file away"
    fi
    install_packages "$accounting"
    write_configs "$accounting"

    if ! alive munged; then
        if [ ! -s /etc/munge/munge.key ]; then
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
            chown munge:munge /etc/munge/munge.key
            chmod 400 /etc/munge/munge.key
        fi
        mkdir -p /run/munge && chown munge:munge /run/munge
        launch_as munge munged /usr/sbin/munged -F
        wait_for 20 munged munge -n
    fi
    if [ "$accounting" = yes ]; then
        if ! alive mariadbd; then
            mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
            launch_as mysql mariadbd /usr/sbin/mariadbd
            wait_for 60 mariadbd mysqladmin ping
        fi
        if ! alive slurmdbd; then
            launch slurmdbd /usr/sbin/slurmdbd -D
            wait_for 60 slurmdbd sacctmgr -n list cluster
        fi
        if [ -z "$(sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -x single)" ]; then
            sacctmgr -i add cluster single >/dev/null
        fi
    fi
    alive slurmctld || { launch slurmctld /usr/sbin/slurmctld -D; wait_for 60 slurmctld scontrol ping; }
    alive slurmd || launch slurmd /usr/sbin/slurmd -D
    wait_for 60 "the node (sinfo idle)" node_idle
    say "started in $((SECONDS - clock)) s ($([ "$accounting" = yes ] && echo "with accounting: sacct answers" || echo "without accounting")); logs in $LOG_DIR"
}

stop() {
    local clock=$SECONDS name pid exe
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        if ! alive "$name"; then
            rm -f "$PID_DIR/$name.pid"
            continue
        fi
        read -r pid exe < "$PID_DIR/$name.pid"
        kill -TERM "$pid"
        for _ in $(seq 60); do
            [ -d "/proc/$pid" ] || break
            sleep 0.5
        done
        if [ -d "/proc/$pid" ]; then
            say "$name ($pid) did not stop within 30 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$PID_DIR/$name.pid"
        say "stopped $name ($pid)"
    done
    say "stopped in $((SECONDS - clock)) s"
}

# running: exit 0 when the controller and node daemons this script started are alive
running() { alive slurmctld && alive slurmd; }

status() {
    local name any=1
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if alive "$name"; then
            say "$name running (PID $(cut -d' ' -f1 "$PID_DIR/$name.pid"))"
            any=0
        fi
    done
    [ "$any" = 0 ] || say "no daemon started by this script is running"
    timeout 10 sinfo 2>/dev/null || true
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    running) running ;;
    *) die "usage: slurm.sh start [--no-accounting] | stop | status | running" ;;
esac
