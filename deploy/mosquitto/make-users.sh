#!/usr/bin/env bash
# Creates the edge broker's users, their passwords, the password file and the ACL.
#
#   make-users.sh [options] [MACHINE ...]
#
# Users: edge-monitor and edge-monitor-out (the monitor's input and output connections),
# edge-monitor-sparkplug (its Sparkplug B edge node, when config.yaml turns it on), scada (a
# dashboard), scada-<NAME> for each further dashboard (--dashboard), daq-<MACHINE> for each
# machine's data acquisition, and replay (demo only, when asked for: --replay). The broker takes
# each client's id from its user name (use_username_as_clientid): one connection per user at a
# time, so every dashboard needs its own user. Each user's password is generated once and kept in
# SECRETS/<user>.password (one line, mode 0600: readable by its owner only); the monitor's is the
# file that config.yaml's broker.password_file names. From those files the script writes
# CONFDIR/passwd (hashed with mosquitto_passwd) and CONFDIR/acl (the acl template next to this
# script, with @ROOT@ replaced and the channels filled in, plus one block per machine).
#
# Idempotent: existing passwords are kept, machines and dashboards added before are kept (those of
# the current password file plus the arguments), the demo user stays if it is there (and is never
# made unless asked for), users of the password file that this script does not manage are kept as
# they are (they get no ACL entry, so they can do nothing until you add one to the template).
# Reload the broker afterwards (systemctl reload mosquitto) to apply.
#
# Options:
#   --confdir DIR        broker files (default /etc/mosquitto/edge-monitor)
#   --secrets DIR        password files (default /etc/edge-monitor/secrets)
#   --root ROOT          topic root, the monitor's topic_root (default mill)
#   --replay             the demo user `replay` (make demo, python -m edge_monitor replay), which
#                        may publish every machine's data and resets: made if missing, then kept by
#                        later runs. Not for a production box (one daq-<MACHINE> user per machine)
#   --no-replay          deletes `replay` if present (install.sh passes it). Without either option
#                        the demo user is kept if present and never made
#   --channels A,B,...   the signal channels a machine publishes, one topic level each: each
#                        daq-<MACHINE> (and replay) may write exactly R/<MACHINE>/cut, R/<MACHINE>/frame and
#                        R/<MACHINE>/signal/<channel> for these. Default: the monitor's six
#                        (edge_monitor/core/channels.py),
#                        smcAC,smcDC,vib_table,vib_spindle,AE_table,AE_spindle. Applies to every
#                        machine's block; give it on every run, like --root
#   --remove MACHINE     delete daq-MACHINE and its ACL block (its password file too); repeatable
#   --dashboard NAME     a further dashboard user scada-NAME with the rights of scada; repeatable
#   --remove-dashboard NAME  delete scada-NAME (its password file too); repeatable
#   --instance NAME      a further monitor instance (edge-monitor@NAME.service, docs/deploy.md,
#                        "Several instances"): users edge-monitor-NAME, edge-monitor-NAME-out and
#                        edge-monitor-NAME-sparkplug with the rights of edge-monitor, edge-monitor-out
#                        and edge-monitor-sparkplug (the broker keeps one connection per user, so
#                        every instance needs its own); repeatable, kept by later runs
#   --remove-instance NAME  delete that instance's users (their password files too); repeatable
#   --monitor-owner U[:G]  chown the monitor's password files to the service user
#   --broker-group G     group that may read passwd and acl (mode 0640). Default: mosquitto when
#                        that group exists and the script runs as root (the broker drops to that
#                        user and re-reads both files on reload); otherwise mode 0600.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATE=$HERE/acl
CONFDIR=/etc/mosquitto/edge-monitor
SECRETS=/etc/edge-monitor/secrets
ROOT=mill
REPLAY=keep  # keep: as it is (kept if present, never made); 1: --replay; 0: --no-replay
# The monitor's channels, in its order (edge_monitor/core/channels.py; tests/test_broker_scripts.py
# checks that the two agree).
CHANNELS=smcAC,smcDC,vib_table,vib_spindle,AE_table,AE_spindle
MONITOR_OWNER=
BROKER_GROUP=auto
MACHINES=()
REMOVE=()
DASHBOARDS=()
REMOVE_DASHBOARDS=()
INSTANCES=()
REMOVE_INSTANCES=()

die() { echo "make-users.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --confdir) CONFDIR=${2:?--confdir needs a directory}; shift 2 ;;
    --secrets) SECRETS=${2:?--secrets needs a directory}; shift 2 ;;
    --root) ROOT=${2:?--root needs a topic root}; shift 2 ;;
    --replay) [ "$REPLAY" != 0 ] || die "--replay and --no-replay contradict each other: give one"; REPLAY=1; shift ;;
    --no-replay) [ "$REPLAY" != 1 ] || die "--replay and --no-replay contradict each other: give one"; REPLAY=0; shift ;;
    --channels) CHANNELS=${2?--channels needs a comma-separated list of channels}; shift 2 ;;
    --remove) REMOVE+=("${2:?--remove needs a machine id}"); shift 2 ;;
    --dashboard) DASHBOARDS+=("${2:?--dashboard needs a name}"); shift 2 ;;
    --remove-dashboard) REMOVE_DASHBOARDS+=("${2:?--remove-dashboard needs a name}"); shift 2 ;;
    --instance) INSTANCES+=("${2:?--instance needs a name}"); shift 2 ;;
    --remove-instance) REMOVE_INSTANCES+=("${2:?--remove-instance needs a name}"); shift 2 ;;
    --monitor-owner) MONITOR_OWNER=${2:?--monitor-owner needs USER or USER:GROUP}; shift 2 ;;
    --broker-group) BROKER_GROUP=${2?--broker-group needs a group (or '' for none)}; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; MACHINES+=("$@"); break ;;
    -*) echo "make-users.sh: unknown option $1" >&2; usage 2 ;;
    *) MACHINES+=("$1"); shift ;;
  esac
done

command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found: install the Debian package mosquitto"
[ -f "$TEMPLATE" ] || die "ACL template $TEMPLATE is missing"
# The same rules as the monitor (edge_monitor/core/topics.py): a machine id is one topic level.
valid_machine() { [[ $1 =~ ^[A-Za-z0-9_-]{1,64}$ && $1 != _monitor ]]; }
for m in "${MACHINES[@]}" "${REMOVE[@]}"; do
  valid_machine "$m" || die "machine id '$m' is not 1-64 characters of A-Z a-z 0-9 _ - (and not _monitor)"
done
for d in "${DASHBOARDS[@]}" "${REMOVE_DASHBOARDS[@]}"; do
  [[ $d =~ ^[A-Za-z0-9_-]{1,57}$ ]] || die "dashboard name '$d' is not 1-57 characters of A-Z a-z 0-9 _ -"
done
# An instance name is the monitor's `instance` (edge_monitor/core/topics.py), short enough for its users' names.
for i in "${INSTANCES[@]}" "${REMOVE_INSTANCES[@]}"; do
  [[ $i =~ ^[A-Za-z0-9_-]{1,40}$ && $i != out && $i != sparkplug && $i != *-out && $i != *-sparkplug ]] ||
    die "instance name '$i' is not 1-40 characters of A-Z a-z 0-9 _ - (nor out, sparkplug, or ending in -out or -sparkplug)"
done
[[ -n $ROOT && $ROOT != */ && $ROOT != /* && $ROOT != *//* && $ROOT != *[+#]* && $ROOT != *[[:space:]]* ]] ||
  die "topic root '$ROOT' must be levels separated by '/', without '+', '#', spaces or empty levels"
IFS=, read -r -a CHANNEL_LIST <<< "$CHANNELS"
[ ${#CHANNEL_LIST[@]} -gt 0 ] || die "--channels '$CHANNELS' names no channel: give them comma-separated, e.g. --channels smcAC,smcDC"
for c in "${CHANNEL_LIST[@]}"; do
  [[ $c =~ ^[A-Za-z0-9_-]{1,64}$ ]] ||
    die "--channels: channel '$c' is not 1-64 characters of A-Z a-z 0-9 _ - (one topic level; comma-separated, no spaces)"
done
[ "$(printf '%s\n' "${CHANNEL_LIST[@]}" | sort | uniq -d)" = "" ] || die "--channels '$CHANNELS' names a channel twice"
if [ "$BROKER_GROUP" = auto ]; then
  BROKER_GROUP=
  if [ "$(id -u)" = 0 ] && getent group mosquitto >/dev/null; then BROKER_GROUP=mosquitto; fi
fi

mkdir -p "$CONFDIR"
if [ ! -d "$SECRETS" ]; then
  mkdir -p "$SECRETS"
  chmod 0711 "$SECRETS"  # others may reach their own file (e.g. the service user), not list them
fi
PASSWD=$CONFDIR/passwd
ACL=$CONFDIR/acl
umask 077
WORK=$(mktemp -d "$CONFDIR/.make-users.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

managed() { [[ $1 == edge-monitor || $1 == edge-monitor-* || $1 == scada || $1 == scada-* || $1 == replay || $1 == daq-* ]]; }
in_list() { local x=$1; shift; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }

# Machines: those of the current password file, plus the arguments, minus --remove; sorted.
if [ -f "$PASSWD" ]; then
  while IFS=: read -r user _; do
    if [[ $user == daq-* ]] && valid_machine "${user#daq-}"; then MACHINES+=("${user#daq-}"); fi
    if [[ $user == scada-* ]]; then DASHBOARDS+=("${user#scada-}"); fi
    if [[ $user =~ ^edge-monitor-(.+)-out$ ]]; then INSTANCES+=("${BASH_REMATCH[1]}"); fi
  done < "$PASSWD"
fi
MONITORS=()
while IFS= read -r i; do
  if [ -n "$i" ] && ! in_list "$i" "${REMOVE_INSTANCES[@]}"; then MONITORS+=("$i"); fi
done < <(printf '%s\n' "${INSTANCES[@]}" | LC_ALL=C sort -u)
BOARDS=()
while IFS= read -r d; do
  if [ -n "$d" ] && ! in_list "$d" "${REMOVE_DASHBOARDS[@]}"; then BOARDS+=("$d"); fi
done < <(printf '%s\n' "${DASHBOARDS[@]}" | LC_ALL=C sort -u)
DAQ=()
while IFS= read -r m; do
  if [ -n "$m" ] && ! in_list "$m" "${REMOVE[@]}"; then DAQ+=("$m"); fi
done < <(printf '%s\n' "${MACHINES[@]}" | LC_ALL=C sort -u)

if [ "$REPLAY" = keep ]; then
  REPLAY=0
  if [ -f "$PASSWD" ] && grep -q '^replay:' "$PASSWD"; then REPLAY=1; fi
fi
USERS=(edge-monitor edge-monitor-out edge-monitor-sparkplug scada)
for i in "${MONITORS[@]}"; do USERS+=("edge-monitor-$i" "edge-monitor-$i-out" "edge-monitor-$i-sparkplug"); done
for d in "${BOARDS[@]}"; do USERS+=("scada-$d"); done
if [ "$REPLAY" = 1 ]; then USERS+=(replay); fi
for m in "${DAQ[@]}"; do USERS+=("daq-$m"); done

echo "make-users.sh: users of the edge broker, topic root '$ROOT'"
# Plain "user:password" lines, hashed below by mosquitto_passwd -U: passwords never appear on a
# command line (where ps would show them).
: > "$WORK/plain"
for user in "${USERS[@]}"; do
  secret=$SECRETS/$user.password
  if [ -s "$secret" ]; then
    state=kept
  else
    state=created
    if [ -f "$PASSWD" ] && grep -q "^$user:" "$PASSWD"; then state="new password (its file was missing)"; fi
    # 24 random bytes, base64url: no ':' (the password file's separator), no spaces.
    pw=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    printf '%s\n' "$pw" > "$secret.tmp"
    chmod 0600 "$secret.tmp"
    mv "$secret.tmp" "$secret"
  fi
  printf '%s:%s\n' "$user" "$(head -n 1 "$secret")" >> "$WORK/plain"
  printf '  %-16s %-10s password in %s\n' "$user" "$state" "$secret"
done
mosquitto_passwd -U "$WORK/plain"

# Users this script does not manage stay as they are; managed users no longer wanted go.
: > "$WORK/others"
if [ -f "$PASSWD" ]; then
  while IFS= read -r line; do
    user=${line%%:*}
    [ -z "$user" ] && continue
    if ! managed "$user"; then
      printf '%s\n' "$line" >> "$WORK/others"
      printf '  %-16s %-10s not managed here: no ACL entry unless you add one to %s\n' "$user" kept "$TEMPLATE"
    elif ! in_list "$user" "${USERS[@]}"; then
      rm -f "$SECRETS/$user.password"
      printf '  %-16s %-10s\n' "$user" removed
    fi
  done < "$PASSWD"
fi
cat "$WORK/plain" "$WORK/others" > "$WORK/passwd"

root_sed=$(printf '%s' "$ROOT" | sed 's/[&|\\]/\\&/g')  # & | \ are special in a sed replacement
# The template's text: a `topic` line with the channel placeholder once per channel (channels are
# checked above: nothing in them is special to sed).
expand_channels() {
  local line c
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line == topic\ *@CHANNEL@* ]]; then
      for c in "${CHANNEL_LIST[@]}"; do printf '%s\n' "${line//@CHANNEL@/$c}"; done
    else
      printf '%s\n' "$line"
    fi
  done
}
# The topic lines of the template's block for user $1: up to the next user, or an empty line
# after its first topic line.
rights_of() {
  awk -v head="user $1" '$0 == head { on = 1; next } on && /^user / { exit } on && /^$/ && seen { exit }
                         on && /^topic / { print; seen = 1 }' "$TEMPLATE"
}
{
  if [ "$REPLAY" = 1 ]; then
    expand_channels < "$TEMPLATE" | sed "s|@ROOT@|$root_sed|g"
  else
    sed -e '/^# BEGIN demo user/,/^# END demo user/d' "$TEMPLATE" | expand_channels | sed "s|@ROOT@|$root_sed|g"
  fi
  # Each machine's exact topics: its cut, and one signal topic per channel (no `#`: a data
  # acquisition could otherwise retain a message on any number of topics below signal/).
  for m in "${DAQ[@]}"; do
    printf '\nuser daq-%s\ntopic write %s/%s/cut\ntopic write %s/%s/frame\n' "$m" "$ROOT" "$m" "$ROOT" "$m"
    for c in "${CHANNEL_LIST[@]}"; do printf 'topic write %s/%s/signal/%s\n' "$ROOT" "$m" "$c"; done
  done
  # Further monitor instances: the rights of the template's monitor users, line for line.
  for i in "${MONITORS[@]}"; do
    for role in "" -out -sparkplug; do
      printf '\nuser edge-monitor-%s%s\n' "$i" "$role"
      rights_of "edge-monitor$role" | expand_channels | sed "s|@ROOT@|$root_sed|g"
    done
  done
  # Further dashboards: the rights of the template's `user scada` block, line for line.
  for d in "${BOARDS[@]}"; do
    printf '\nuser scada-%s\n' "$d"
    rights_of scada | expand_channels | sed "s|@ROOT@|$root_sed|g"
  done
} > "$WORK/acl"

for f in passwd acl; do
  if [ -n "$BROKER_GROUP" ]; then
    chgrp "$BROKER_GROUP" "$WORK/$f"
    chmod 0640 "$WORK/$f"
  else
    chmod 0600 "$WORK/$f"
  fi
  mv "$WORK/$f" "$CONFDIR/$f"  # atomic: the broker never reads a half-written file
done
if [ -n "$MONITOR_OWNER" ]; then
  for user in "${USERS[@]}"; do
    if [[ $user == edge-monitor || $user == edge-monitor-* ]]; then chown "$MONITOR_OWNER" "$SECRETS/$user.password"; fi
  done
fi

boards=scada
for d in "${BOARDS[@]}"; do boards+=" scada-$d"; done
echo "wrote $PASSWD (${#USERS[@]} users of this script) and $ACL (${#DAQ[@]} machine(s): ${DAQ[*]:-none};" \
  "dashboard users: $boards; channels: ${CHANNEL_LIST[*]})"
if [ "$REPLAY" = 1 ]; then
  echo "DEMO user replay is there: it may publish every machine's data and resets; on a production box" \
    "delete it with --no-replay"
fi
echo "monitor's config.yaml: broker.username: edge-monitor, broker.password_file: $SECRETS/edge-monitor.password,"
echo "  broker.output_username: edge-monitor-out, broker.output_password_file: $SECRETS/edge-monitor-out.password,"
echo "  sparkplug.username: edge-monitor-sparkplug, sparkplug.password_file: $SECRETS/edge-monitor-sparkplug.password"
for i in "${MONITORS[@]}"; do
  echo "instance $i's /etc/edge-monitor/$i.yaml: the same keys with users edge-monitor-$i, edge-monitor-$i-out," \
    "edge-monitor-$i-sparkplug and their files in $SECRETS"
done
echo "apply to a running broker: systemctl reload mosquitto"
