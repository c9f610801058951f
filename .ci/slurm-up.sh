#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster on this machine (munge, MariaDB + slurmdbd, slurmctld,
# slurmd), so the submitit SLURM launcher can be exercised for real in CI. Idempotent: on a
# machine where the cluster is already up it only checks it. Needs root (apt, /etc, daemons).
#
# Accounting (slurmdbd) is on by default because submitit polls job states with `sacct`; without
# it every state reads UNKNOWN and a job that dies without writing its result (scancel, OOM,
# node failure) makes job.result() - and a Hydra multirun - wait forever.
#
# Usage: .ci/slurm-up.sh
#   SLURM_UP_TIMEOUT=60      seconds to wait for the node to become idle
#   SLURM_UP_ACCOUNTING=0    skip MariaDB/slurmdbd (sacct then fails; see above)
set -euo pipefail

TIMEOUT="${SLURM_UP_TIMEOUT:-60}"
ACCOUNTING="${SLURM_UP_ACCOUNTING:-1}"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
STATE_DIR=/var/spool/slurm/ctld
SPOOL_DIR=/var/spool/slurm/d
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
PARTITION=debug
CLUSTER=ci

say() { echo "[slurm-up] $*"; }
die() {
  echo "[slurm-up] ERROR: $*" >&2
  for f in "$LOG_DIR"/slurmdbd.log "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log; do
    [[ -f $f ]] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
running() { pgrep -x "$1" >/dev/null; }
# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds; fail after SECONDS.
wait_for() {
  local until=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < until)) || return 1
    sleep 0.2
  done
}
# write_if_changed FILE MODE CONTENT: returns 0 when FILE was (re)written, 1 when already identical.
write_if_changed() {
  if [[ -f $1 ]] && [[ $(cat "$1") == "$3" ]]; then return 1; fi
  printf '%s\n' "$3" >"$1"
  chmod "$2" "$1"
}
# stop DAEMON: stop it through the pid it recorded, so nothing else with that name is touched.
stop() {
  local pid
  pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null || pgrep -x -o "$1" || true)
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
  wait_for 10 bash -c "! pgrep -x $1" || die "$1 did not stop"
}

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, writes /etc/slurm, starts daemons)"

# 1. Packages. dpkg does not start services here (no systemd); they are started below.
pkgs=(slurm-wlm munge)
[[ $ACCOUNTING == 1 ]] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi
command -v slurmctld >/dev/null || die "slurmctld not found after installing slurm-wlm"

# 2. Munge: its shared key authenticates every SLURM RPC, even on one node.
if [[ ! -s /etc/munge/munge.key ]]; then
  say "creating /etc/munge/munge.key"
  install -d -o munge -g munge -m 0700 /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! running munged; then
  say "starting munged"
  # munged refuses to run as root; run it as its own user.
  su -s /bin/sh munge -c /usr/sbin/munged || die "munged failed to start (see /var/log/munge/munged.log)"
fi
munge -n | unmunge >/dev/null || die "munge self-test (munge -n | unmunge) failed"

install -d -m 0755 /etc/slurm "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"

# 3. Accounting: MariaDB on its unix socket, slurmdbd in front of it.
if [[ $ACCOUNTING == 1 ]]; then
  if ! running mariadbd; then
    command -v mariadbd >/dev/null || die "mariadbd not found (is mariadb-server installed?)"
    say "starting mariadbd"
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    # slurmdbd asks for a long lock wait (it logs an error otherwise); its wish for a large
    # innodb_buffer_pool_size is ignored on purpose: a test database is tiny.
    setsid -f mariadbd --user=mysql --skip-networking --innodb-lock-wait-timeout=900 \
      >"$LOG_DIR/mariadb.log" 2>&1
    wait_for 30 mariadb-admin ping || die "mariadbd did not answer within 30 s (see $LOG_DIR/mariadb.log)"
  fi
  # Root connects through the unix socket (MariaDB's unix_socket auth): no password to manage.
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db" || die "could not create database slurm_acct_db"
  dbd_conf=$(
    cat <<EOF
# Written by .ci/slurm-up.sh. Do not edit by hand.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
EOF
  )
  if write_if_changed "$DBD_CONF" 0600 "$dbd_conf" && running slurmdbd; then
    say "restarting slurmdbd for the new config"
    stop slurmdbd
  fi
  if ! running slurmdbd; then
    say "starting slurmdbd"
    slurmdbd || die "slurmdbd failed to start"
    wait_for 30 bash -c 'echo >/dev/tcp/localhost/6819' || die "slurmdbd did not listen on port 6819 within 30 s"
  fi
  accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
  accounting_lines="AccountingStorageType=accounting_storage/none"
fi

# 4. slurm.conf, derived from this machine.
host=$(hostname -s)
cpus=$(nproc)
total_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
headroom_mb=$((total_mb / 10 > 512 ? total_mb / 10 : 512)) # left to the OS and the daemons
mem_mb=$((total_mb - headroom_mb))
conf=$(
  cat <<EOF
# Written by .ci/slurm-up.sh: one-node test cluster on $host. Do not edit by hand.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job may not start again before its credential expires (default 120 s); keep requeue
# tests fast. Too short a lifetime breaks slow step launches; 10 s is ample on one idle node.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# No cgroups: processes are tracked through /proc and tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$accounting_lines
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Batch jobs may be requeued (submitit requeues itself on timeout and preemption).
JobRequeue=1
SchedulerType=sched/backfill
# No mail on a test machine; an unset MailProg logs an error at every start.
MailProg=/bin/true
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
InactiveLimit=0
KillWait=5
MinJobAge=300
# A job that asks for no memory gets a per-CPU share instead of the whole node, so jobs can overlap.
DefMemPerCPU=$((mem_mb / cpus))
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)

# 5. Daemons. A changed config needs a restart of daemons that were already running.
if write_if_changed "$CONF" 0644 "$conf"; then
  say "wrote $CONF (node $host, CPUs=$cpus, RealMemory=${mem_mb}MB)"
  for d in slurmd slurmctld; do
    if running "$d"; then
      say "restarting $d for the new config"
      stop "$d"
    fi
  done
fi
if ! running slurmctld; then
  say "starting slurmctld"
  slurmctld || die "slurmctld failed to start"
fi
if ! running slurmd; then
  say "starting slurmd"
  slurmd || die "slurmd failed to start"
fi

say "waiting up to ${TIMEOUT}s for node $host to be idle"
deadline=$((SECONDS + TIMEOUT))
state=""
while ((SECONDS < deadline)); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1 || true)
  case "$state" in
    idle | mixed | allocated) break ;;
    down* | drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
case "$state" in
  idle | mixed | allocated) say "node $host is $state" ;;
  *) die "node $host not usable after ${TIMEOUT}s (state '${state:-none}'; reason: $(sinfo -h -R 2>/dev/null))" ;;
esac

out=$(timeout 30 srun -N1 -n1 -p "$PARTITION" hostname) || die "srun -N1 -n1 hostname failed"
if [[ $ACCOUNTING == 1 ]]; then
  # slurmctld registers the cluster with slurmdbd on its own; sacct must now list jobs.
  wait_for 20 sacct -n -X -a -S now-3600 || die "sacct does not answer (see $LOG_DIR/slurmdbd.log)"
fi
say "srun hostname -> $out; cluster ready (partition '$PARTITION', CPUs=$cpus, RealMemory=${mem_mb}MB)"
