#!/usr/bin/env bash
# A real Slurm cluster on this machine, one node or several, for the tests and for trying the
# sbatch scripts (Debian's slurm-wlm + munge; no systemd needed). Everything lives in one folder;
# the daemons are stopped by their pid files, never by name.
#
#   slurm/cluster.sh install          # apt-get install slurm-wlm munge (root only; quiet; idempotent)
#   slurm/cluster.sh start DIR        # write DIR/slurm.conf, start munged/slurmctld/slurmd, wait idle
#   slurm/cluster.sh start DIR --nodes 2   # nodes n1, n2: a slurmd each, the cores split among them
#   export SLURM_CONF=DIR/slurm.conf  # then sbatch/squeue/scontrol talk to this cluster
#   slurm/cluster.sh stop DIR         # cancel its jobs, stop the daemons it started
#   slurm/cluster.sh status DIR
#
# Exit status of start: 0 up; 1 failed (see DIR/*.log); 4 Slurm/munge not installed or not root
# (the reason on stderr: tests skip on it).
# Settings that matter here (measured, see the project's notes): linuxproc proctrack and no task
# plugin (no cgroups), the node line spelled out from `slurmd -C`, and short credential
# expiry + scheduler intervals so a requeued job restarts in ~15 s instead of ~2.5 min.
# Several nodes: Debian's slurmd runs more than once on a machine when each node has its own
# Port= and its spool, pid and log files carry %n (the node name); the names n1..nN must resolve
# for torchrun's rendezvous on the first node, so start adds `127.0.0.1 nI` to /etc/hosts when
# one does not.
set -euo pipefail
shopt -s nullglob  # a glob of pid files that matches none is empty, not itself

usage() {
    echo "usage: $0 install | start DIR [--nodes N] | stop DIR | status DIR" >&2
    exit 2
}

cmd=${1:-}
dir=${2:-}
nodes=1
if [[ $cmd == start ]] && (($# > 2)); then
    shift 2
    while (($#)); do
        case $1 in
            --nodes) (($# >= 2)) || usage; nodes=$2; shift 2 ;;
            --nodes=*) nodes=${1#--nodes=}; shift ;;
            *) echo "cluster.sh: unknown option $1" >&2; usage ;;
        esac
    done
fi
if [[ ! $nodes =~ ^[1-9][0-9]*$ ]]; then
    echo "cluster.sh: --nodes wants a positive whole number, got '$nodes'" >&2
    exit 2
fi

die() { echo "cluster.sh: $*" >&2; exit 1; }

need_tools() {
    local missing=()
    for tool in munged slurmctld slurmd sbatch scontrol; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        echo "cluster.sh: Slurm/munge not installed (missing: ${missing[*]}); as root run: $0 install" >&2
        exit 4
    fi
    if [[ $(id -u) != 0 ]]; then
        echo "cluster.sh: a local Slurm cluster needs root (SlurmUser=root, munged as the munge user)" >&2
        exit 4
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
    if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
        return 0
    fi
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "note: Slurm tests will be skipped: slurm-wlm/munge missing (as root: apt-get install slurm-wlm munge)" >&2
        return 0
    fi
    echo "make setup: running as root, so installing Debian's slurm-wlm and munge with apt-get for the Slurm tests (a few seconds to a minute)"
    export DEBIAN_FRONTEND=noninteractive
    local log
    log=$(mktemp)
    # without package lists (a fresh container) the first attempt fails fast: update, try again
    if ! { apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$log" 2>&1 ||
           { apt-get update -qq >"$log" 2>&1 &&
             apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$log" 2>&1; }; }; then
        tail -n 5 "$log" >&2
        echo "note: apt-get install slurm-wlm munge failed; Slurm tests will be skipped" >&2
    fi
    rm -f "$log"
    return 0
}

start_munge() {
    # one munged per machine, on the standard socket: reuse a running one, else start ours
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    if alive /run/munge/munged.pid; then
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 ||
            die "no /etc/munge/munge.key and mungekey failed"
    fi
    runuser -u munge -- /usr/sbin/munged --force >>"$dir/munged.out" 2>&1 || die "munged failed to start (see $dir/munged.out)"
    cp /run/munge/munged.pid "$dir/munged.pid"  # ours: `stop` ends it
}

node_names() {  # the node names, comma-separated: this machine's name, or n1..nN
    if ((nodes == 1)); then
        hostname -s
    else
        seq -s, -f 'n%g' 1 "$nodes"
    fi
}

hardware_field() {  # hardware_field NAME: that field of `slurmd -C`'s node line
    slurmd -C | head -n 1 | tr ' ' '\n' | sed -n "s/^$1=//p"
}

node_lines() {  # node_lines HOST: slurm.conf's NodeName lines
    if ((nodes == 1)); then
        # this machine as slurmd sees it: CPUs=... SocketsPerBoard=... RealMemory=... (a node
        # line that does not spell these out is marked invalid)
        echo "NodeName=$1 NodeAddr=127.0.0.1 $(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //') State=UNKNOWN"
        return
    fi
    local cores threads memory cores_each name
    cores=$(( $(hardware_field SocketsPerBoard) * $(hardware_field CoresPerSocket) ))
    threads=$(hardware_field ThreadsPerCore)
    memory=$(hardware_field RealMemory)
    cores_each=$((cores / nodes))
    # each node describes its share of the machine (more than the machine: slurmd marks it invalid)
    for name in $(node_names | tr , ' '); do
        echo "NodeName=$name NodeHostname=$1 NodeAddr=127.0.0.1 Port=$(free_port)" \
             "CPUs=$((cores_each * threads)) Boards=1 SocketsPerBoard=1 CoresPerSocket=$cores_each" \
             "ThreadsPerCore=$threads RealMemory=$((memory / nodes)) State=UNKNOWN"
    done
}

check_node_count() {
    local cores
    cores=$(( $(hardware_field SocketsPerBoard) * $(hardware_field CoresPerSocket) ))
    if ((nodes > cores)); then
        echo "cluster.sh: --nodes $nodes but this machine has $cores cores and each node needs one: use --nodes $cores or fewer" >&2
        exit 2
    fi
}

resolve_node_names() {  # torchrun's rendezvous connects to the first node by name
    ((nodes > 1)) || return 0
    local name
    for name in $(node_names | tr , ' '); do
        getent hosts "$name" >/dev/null || echo "127.0.0.1 $name" >>/etc/hosts ||
            die "node name $name does not resolve and /etc/hosts is not writable: add '127.0.0.1 $name' to it"
    done
}

write_conf() {
    local host ctld_port slurmd_port
    host=$(hostname -s)
    ctld_port=${SLURMCTLD_PORT:-$(free_port)}
    slurmd_port=${SLURMD_PORT:-$(free_port)}
    cat >"$dir/slurm.conf" <<EOF
# written by slurm/cluster.sh: a $nodes-node test cluster on one machine
ClusterName=localtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=30
InactiveLimit=0
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.%n.log
$(node_lines "$host")
PartitionName=debug Nodes=$(node_names) Default=YES MaxTime=INFINITE State=UP
EOF
}

any_alive() {  # any_alive PIDFILE...: is one of them a running process
    local file
    for file in "$@"; do alive "$file" && return 0; done
    return 1
}

start() {
    need_tools
    [[ -n $dir ]] || usage
    check_node_count
    mkdir -p "$dir/state"
    dir=$(cd "$dir" && pwd)
    if any_alive "$dir"/slurm*.pid; then
        die "a cluster is already running from $dir (stop it first: $0 stop $dir)"
    fi
    local name
    for name in $(node_names | tr , ' '); do mkdir -p "$dir/spool/$name"; done
    resolve_node_names
    write_conf
    start_munge
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF" || die "slurmctld failed to start (see $dir/slurmctld.log)"
    for name in $(node_names | tr , ' '); do
        slurmd -f "$SLURM_CONF" -N "$name" || die "slurmd for node $name failed to start (see $dir/slurmd.$name.log)"
    done
    local states=""
    for _ in $(seq 1 100); do
        # one line per node; all of them idle
        states=$(sinfo -h -N -o %T 2>/dev/null | sort | uniq -c | xargs || true)
        [[ $states == "$nodes idle" ]] && { echo "export SLURM_CONF=$SLURM_CONF"; return 0; }
        sleep 0.2
    done
    die "the nodes did not become idle within 20 s (states: ${states:-none}; see $dir/slurmctld.log, $dir/slurmd.*.log)"
}

stop_daemons() {  # stop_daemons PIDFILE...: TERM to all at once (each takes ~2 s), wait up to 10 s, then KILL
    local file pid pids=()
    for file in "$@"; do
        if alive "$file"; then
            pid=$(cat "$file")
            kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
        fi
    done
    for _ in $(seq 1 100); do
        local running=()
        for pid in ${pids[@]+"${pids[@]}"}; do kill -0 "$pid" 2>/dev/null && running+=("$pid"); done
        pids=(${running[@]+"${running[@]}"})
        ((${#pids[@]} == 0)) && break
        sleep 0.1
    done
    for pid in ${pids[@]+"${pids[@]}"}; do
        echo "cluster.sh: process $pid ignored SIGTERM for 10 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$@"
}

stop() {
    [[ -n $dir && -d $dir ]] || die "usage: $0 stop DIR (a folder given to start)"
    dir=$(cd "$dir" && pwd)
    if alive "$dir/slurmctld.pid"; then
        # cancel this cluster's jobs first, so no job step outlives the daemons
        export SLURM_CONF=$dir/slurm.conf
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 50); do
                [[ -z $(squeue -h -t running,completing -o %A 2>/dev/null || true) ]] && break
                sleep 0.2
            done
        fi
    fi
    local files=("$dir"/slurmd.*.pid "$dir/slurmctld.pid")
    # only the munged this script started (its pid file is still the machine's munged)
    if alive "$dir/munged.pid" && [[ $(cat "$dir/munged.pid") == $(cat /run/munge/munged.pid 2>/dev/null) ]]; then
        files+=("$dir/munged.pid")
    fi
    stop_daemons "${files[@]}"
    rm -f "$dir/munged.pid"
}

status() {
    [[ -n $dir ]] || usage
    local file name
    for file in "$dir"/munged.pid "$dir"/slurmctld.pid "$dir"/slurmd.*.pid; do
        name=$(basename "$file" .pid)
        if alive "$file"; then echo "$name: running ($(cat "$file"))"; else echo "$name: not running (from $dir)"; fi
    done
    if alive "$dir/slurmctld.pid"; then SLURM_CONF=$dir/slurm.conf sinfo; fi
}

case $cmd in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
