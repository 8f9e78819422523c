#!/usr/bin/env bash
# A real single-node SLURM on localhost, for CI and for trying radcluster's SLURM path on a laptop.
#
#   deploy/slurm/single-node.sh start    install slurm-wlm + munge if missing, write slurm.conf, start
#                                        munged/slurmctld/slurmd, wait until the node is idle
#   deploy/slurm/single-node.sh stop     cancel the jobs and stop exactly the daemons this script started
#   deploy/slurm/single-node.sh status   exit 0 when the controller answers and the node is usable, else 3
#
# Needs root and Debian 12 (slurm-wlm 22.05, munge 0.5). No systemd: the daemons are started by hand and
# their PIDs recorded in $STATE/*.pid. Idempotent: `start` reuses daemons that already run, including ones
# it did not start (those are never stopped by `stop`). PID 1 on containers and micro-VMs may not reap
# orphans, so "alive" means "exists and is not a zombie" (/proc/PID/stat), never `kill -0`.
#
# Settings (environment):
#   RADCLUSTER_SLURM_STATE      pid files, job-completion log, daemon logs   (default /tmp/radcluster-slurm)
#   RADCLUSTER_SLURM_PARTITION  partition name; jobs/extract_slurm.yaml uses it as `queue` (default debug)
#   RADCLUSTER_SLURM_MEM_MB     RealMemory advertised (default: 3/4 of MemTotal)
#   RADCLUSTER_SLURM_WAIT       seconds to wait for the node to become idle  (default 60)
set -euo pipefail

STATE=${RADCLUSTER_SLURM_STATE:-/tmp/radcluster-slurm}
PARTITION=${RADCLUSTER_SLURM_PARTITION:-debug}
WAIT=${RADCLUSTER_SLURM_WAIT:-60}
CONF=/etc/slurm/slurm.conf
DAEMONS=(munged slurmctld slurmd)   # start order; stop goes in reverse

log() { printf 'single-node.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A PID is alive when /proc/PID exists and its state (3rd field of /proc/PID/stat) is not Z.
# The command name is in parentheses and may contain spaces, so cut after the last ')'.
proc_state() { [[ -r /proc/$1/stat ]] && sed -e 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1; }
alive() { [[ -n ${1:-} ]] && local s && s=$(proc_state "$1") && [[ $s != Z && $s != X ]]; }
comm_of() { cat "/proc/$1/comm" 2>/dev/null || true; }

# PID of our own daemon $1 (from our pid file), empty when not running.
our_pid() {
  local pid
  pid=$(cat "$STATE/$1.pid" 2>/dev/null || true)
  if alive "$pid" && [[ $(comm_of "$pid") == "$1" ]]; then echo "$pid"; fi
}
# PIDs of any live (non-zombie) process named exactly $1, whoever started it. Detection only.
any_pids() {
  local p out=()
  for p in $(pgrep -x "$1" 2>/dev/null || true); do alive "$p" && out+=("$p"); done
  echo "${out[*]:-}"
}

node_state() { sinfo -h -N -n localhost -o %t 2>/dev/null | head -n1 || true; }
usable() { [[ $(node_state) =~ ^(idle|mix|alloc) ]]; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi   # some munged already answers
  [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  rm -f /run/munge/munged.pid
  # munged daemonizes and writes its own pid file; --force: start even if a stale socket is left over
  runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
  for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
  munge -n | unmunge >/dev/null || die "munged started but munge -n | unmunge fails (see /var/log/munge)"
}

write_conf() {
  local cpus mem_mb tmp
  # nproc obeys OMP_NUM_THREADS, which Dask and test runners set to 1 in their processes: the
  # node must advertise its real cores, or SLURM fits fewer jobs than the machine can run
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  mem_mb=${RADCLUSTER_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)}
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$STATE/log"
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
# Written by radcluster deploy/slurm/single-node.sh; rewritten on every start that starts slurmctld.
ClusterName=radcluster
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups: 22.05 has no CgroupPlugin=disabled, so there is no cgroup.conf either
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd, so no sacct; finished jobs are recorded one line each in the job-completion log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# finished jobs stay visible to 'squeue -t all' for this many seconds
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  install -m 0644 "$tmp" "$CONF"
  rm -f "$tmp" /etc/slurm/cgroup.conf
}

# Start daemon $1 with the command in the remaining arguments unless some $1 already runs.
start_daemon() {
  local name=$1; shift
  if [[ -n $(our_pid "$name") ]]; then return; fi
  if [[ -n $(any_pids "$name") ]]; then log "$name already runs (pid $(any_pids "$name")), not started by this script: reusing it"; return; fi
  rm -f "$STATE/$name.pid"
  "$@"                                     # both daemons fork and write the pid file named in slurm.conf
  for _ in $(seq 50); do [[ -n $(our_pid "$name") ]] && return; sleep 0.1; done
  die "$name did not start; last log lines:
$(tail -n 20 "$STATE/log/$name.log" 2>/dev/null)"
}

start() {
  [[ $(id -u) == 0 ]] || die "must run as root (slurmd and munged need it)"
  mkdir -p "$STATE"
  install_packages
  start_munge
  if [[ -z $(any_pids slurmctld) ]]; then
    write_conf
    start_daemon slurmctld /usr/sbin/slurmctld -c        # -c: forget jobs of an earlier run
  else
    [[ -f $CONF ]] || die "a slurmctld runs but $CONF is missing"
    start_daemon slurmctld true
  fi
  start_daemon slurmd /usr/sbin/slurmd -N localhost
  local waited=0
  until usable; do
    case $(node_state) in
      drain* | down* | fail*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
    esac
    ((waited++ < WAIT)) || die "node not idle after ${WAIT}s (state '$(node_state)'); logs in $STATE/log"
    sleep 1
  done
  sinfo
}

stop() {
  local name pid ours=0
  [[ -n $(our_pid slurmctld) ]] && ours=1
  if ((ours)); then
    # jobs left running would leave slurmstepd and dask workers behind once slurmd is gone
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 30); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 1; done
    fi
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    pid=$(our_pid "$name")
    if [[ -z $pid ]]; then rm -f "$STATE/$name.pid"; continue; fi
    kill -TERM "$pid"
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    if alive "$pid"; then die "$name (pid $pid) still running"; fi
    if [[ $(proc_state "$pid" || true) == Z ]]; then
      echo "stopped $name (pid $pid; left as a zombie: its parent does not reap)"
    else
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$STATE/$name.pid"
  done
}

status() {
  local name pid others rc=0
  for name in "${DAEMONS[@]}"; do
    pid=$(our_pid "$name")
    others=$(any_pids "$name")
    if [[ -n $pid ]]; then
      echo "$name: running, pid $pid (started by this script)"
    elif [[ -n $others ]]; then
      echo "$name: running, pid $others (not started by this script)"
    else
      echo "$name: not running"
      rc=3
    fi
  done
  if usable; then echo "node localhost: $(node_state) (partition $PARTITION)"; else echo "node localhost: not usable"; rc=3; fi
  return $rc
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
