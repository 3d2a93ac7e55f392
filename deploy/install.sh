#!/usr/bin/env bash
# Installs the edge monitor and its broker configuration on a Debian or Ubuntu box
# (docs/deploy.md, "Install"). Run it as root from a checkout: sudo deploy/install.sh
#
#   install.sh [--prefix DIR] [--dry-run] [--bundle PATH] [--venv PATH] [options]
#
# Installs (PREFIX is empty unless --prefix is given):
#   PREFIX/opt/edge-monitor/                  a Python venv with edge-monitor and ONNX Runtime (no
#                                             TensorFlow): the `gpu` extra (its CUDA build) when
#                                             `nvidia-smi -L` lists a GPU, else `serve`
#   PREFIX/etc/edge-monitor/config.yaml       the daemon's configuration (never overwritten)
#   PREFIX/etc/edge-monitor/secrets/          broker passwords (deploy/mosquitto/make-users.sh)
#   PREFIX/etc/edge-monitor/test-ca/          the test CA's private key (root only), on a first
#                                             install: never in the broker's certs/
#   PREFIX/var/lib/edge-monitor/bundle        the model bundle in use: a symlink to bundles/<model id>
#                                             (in the service's state directory)
#   PREFIX/etc/mosquitto/conf.d/edge-monitor.conf and PREFIX/etc/mosquitto/edge-monitor/
#                                             the broker: listeners, passwd, acl, certs/ (from a
#                                             test CA on a first install); no demo user `replay`
#   PREFIX/usr/local/share/edge-monitor/mosquitto/   the broker scripts, to add machines later
#   PREFIX/etc/systemd/system/edge-monitor.service and edge-monitor-broker-save.service (saves the
#                                             broker's database every 5 s while it is small), and
#                                             the template edge-monitor@.service (not enabled)
# and, without --prefix: the Debian packages it needs (python3-venv mosquitto mosquitto-clients
# openssl), the system user edge-monitor, and `systemctl enable --now` of mosquitto and
# edge-monitor (skipped with a message when systemd is not PID 1).
#
# Options:
#   --prefix DIR      install into DIR, unprivileged: no packages, no user, no ownership changes,
#                     no systemctl; the unit and the configuration point into DIR
#   --dry-run         print every action without doing it
#   --bundle PATH     the model bundle to install (default: runs/demo/bundle of this checkout)
#   --venv PATH       use this existing venv (symlinked as PREFIX/opt/edge-monitor) instead of
#                     building one: quick, for tests and for boxes that manage their own Python
#   --gpu | --no-gpu  install the `gpu` extra or not, whatever nvidia-smi says
#   --root R          topic root (default mill)
#   --machine ID      create the broker user daq-ID for a machine's data acquisition; repeatable
#   --broker-port N   the broker's loopback listener (default 1883)
#   --tls-port N      the broker's TLS listener for SCADA clients (default 8883)
#
# Idempotent: what is already installed and identical is left alone (a second run changes
# nothing); a changed source tree or unit is updated and the service restarted; a new bundle is
# installed beside the old one and the running service reloaded (no restart, no open cut lost).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
PREFIX=
DRY_RUN=0
BUNDLE=$SRC/runs/demo/bundle
VENV_FROM=
GPU=auto
ROOT=mill
MACHINES=()
BROKER_PORT=1883
TLS_PORT=8883
PYTHON=${PYTHON:-python3}
SERVICE_USER=edge-monitor

die() { echo "install.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --bundle) BUNDLE=${2:?--bundle needs a path}; shift 2 ;;
    --venv) VENV_FROM=${2:?--venv needs a path}; shift 2 ;;
    --gpu) GPU=yes; shift ;;
    --no-gpu) GPU=no; shift ;;
    --root) ROOT=${2:?--root needs a topic root}; shift 2 ;;
    --machine) MACHINES+=("${2:?--machine needs a machine id}"); shift 2 ;;
    --broker-port) BROKER_PORT=${2:?--broker-port needs a port}; shift 2 ;;
    --tls-port) TLS_PORT=${2:?--tls-port needs a port}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

# ------------------------------------------------------------------------------------ checks

if [ -n "$PREFIX" ]; then
  [[ $PREFIX != *[[:space:]]* ]] || die "--prefix '$PREFIX': a path without spaces (it goes into the unit's ExecStart)"
  PREFIX=$(realpath -m "$PREFIX")
  [ "$PREFIX" != / ] || PREFIX=
fi
PRIVILEGED=1
[ -n "$PREFIX" ] && PRIVILEGED=0
if [ "$PRIVILEGED" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0 ...), or install into a folder with --prefix DIR"
fi
for port in "$BROKER_PORT" "$TLS_PORT"; do
  [[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "port '$port' is not 1-65535"
done
BUNDLE=$(realpath -m "$BUNDLE")
[ -f "$BUNDLE/bundle.json" ] ||
  die "--bundle $BUNDLE: not a model bundle (no bundle.json); train one with \`make demo\` or \`python -m training fit\`"
if [ -n "$VENV_FROM" ]; then
  VENV_FROM=$(realpath -m "$VENV_FROM")
  [ -x "$VENV_FROM/bin/edge-monitor" ] ||
    die "--venv $VENV_FROM: no bin/edge-monitor in it (pip install this project into it first)"
fi

OPT=$PREFIX/opt/edge-monitor
ETC=$PREFIX/etc/edge-monitor
SECRETS=$ETC/secrets
STATE=$PREFIX/var/lib/edge-monitor
MOSQ_CONFD=$PREFIX/etc/mosquitto/conf.d
MOSQ_DIR=$PREFIX/etc/mosquitto/edge-monitor
SHARE=$PREFIX/usr/local/share/edge-monitor
UNIT_DIR=$PREFIX/etc/systemd/system

WORK=$(mktemp -d)  # rendered files, compared with the installed ones; never inside PREFIX
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------------------------ helpers

CHANGED_SERVICE=0  # something the running monitor reads changed: restart it
CHANGED_BROKER=0
CHANGED_UNIT=0
CHANGED_SAVER=0

say() { printf '%s\n' "$*"; }
# Run a command, or only print it under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then printf 'would run:'; else printf '+'; fi
  printf ' %q' "$@"
  printf '\n'
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}
# Owner options for install(1): root:GROUP on a real install, nothing under --prefix.
owner() { if [ "$PRIVILEGED" = 1 ]; then printf -- '-o\nroot\n-g\n%s\n' "$1"; fi; }
# make_dir DIR: a directory of the system (/opt, /etc/mosquitto, ...): created when missing,
# otherwise left exactly as it is.
make_dir() { [ -d "$1" ] || run install -d -m 0755 "$1"; }
# ensure_dir DIR MODE [USER:GROUP]: a directory of ours, with this mode (and owner).
ensure_dir() {
  local dir=$1 mode=$2 who=${3:-}
  if [ -d "$dir" ] && [ "$(stat -c %a "$dir")" = "${mode#0}" ] &&
     { [ "$PRIVILEGED" = 0 ] || [ -z "$who" ] || [ "$(stat -c %U:%G "$dir")" = "$who" ]; }; then
    return
  fi
  if [ "$PRIVILEGED" = 1 ] && [ -n "$who" ]; then
    run install -d -m "$mode" -o "${who%%:*}" -g "${who##*:}" "$dir"
  else
    run install -d -m "$mode" "$dir"
  fi
}
# put_file SRC DEST MODE [GROUP]: install when the content, mode or group differ. Sets CHANGED.
put_file() {
  local src=$1 dest=$2 mode=$3 group=${4:-root}
  CHANGED=0
  if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ] &&
     { [ "$PRIVILEGED" = 0 ] || [ "$(stat -c %G "$dest")" = "$group" ]; }; then
    say "unchanged $dest"
    return
  fi
  local opts
  mapfile -t opts < <(owner "$group")
  run install -m "$mode" "${opts[@]}" "$src" "$dest"
  CHANGED=1
}

# ------------------------------------------------------------------------------------ packages

if [ "$PRIVILEGED" = 1 ]; then
  missing=()
  for pkg in python3-venv mosquitto mosquitto-clients openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    say "unchanged Debian packages python3-venv mosquitto mosquitto-clients openssl"
  fi
else
  say "skipped (--prefix): Debian packages python3-venv mosquitto mosquitto-clients openssl"
fi

# ------------------------------------------------------------------------------------ service user

if [ "$PRIVILEGED" = 1 ]; then
  if getent passwd "$SERVICE_USER" >/dev/null; then
    say "unchanged system user $SERVICE_USER"
  else
    run useradd --system --user-group --home-dir /var/lib/edge-monitor --no-create-home \
      --shell /usr/sbin/nologin --comment "edge tool-wear monitor" "$SERVICE_USER"
  fi
else
  say "skipped (--prefix): system user $SERVICE_USER"
fi

# ------------------------------------------------------------------------------------ venv

make_dir "$PREFIX/opt"
if [ -n "$VENV_FROM" ]; then
  if [ -L "$OPT" ] && [ "$(readlink "$OPT")" = "$VENV_FROM" ]; then
    say "unchanged $OPT -> $VENV_FROM"
  else
    [ ! -e "$OPT" ] || [ -L "$OPT" ] || die "$OPT exists and is not a symlink: remove it to use --venv"
    run ln -sfn "$VENV_FROM" "$OPT"
    CHANGED_SERVICE=1
  fi
else
  # The serving set only (no TensorFlow): ONNX Runtime, its CUDA build where there is a GPU.
  extra='[serve]' other=onnxruntime-gpu
  if [ "$GPU" = yes ] || { [ "$GPU" = auto ] && command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
    extra='[gpu]' other=onnxruntime
  fi
  say "python package: edge-monitor${extra} ($([ "$extra" = '[gpu]' ] && echo "GPU found or --gpu" || echo "no GPU found, or --no-gpu"))"
  # What the venv was built from: the source files and the extra. Same stamp, nothing to do.
  stamp=$( { cd "$SRC" && find pyproject.toml edge_monitor training -type f \( -name '*.py' -o -name '*.toml' \) \
             -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum; echo "extra=$extra"; } | sha256sum | cut -d' ' -f1)
  if [ -L "$OPT" ]; then
    die "$OPT is a symlink (from an install with --venv): remove it, or pass --venv again"
  elif [ -f "$OPT/.edge-monitor-source" ] && [ "$(cat "$OPT/.edge-monitor-source")" = "$stamp" ]; then
    say "unchanged $OPT (built from this source tree)"
  else
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
      die "$PYTHON is not Python 3.11 or newer (Debian 12 and Ubuntu 24.04 have it): set PYTHON=/path/to/python3.11"
    [ -x "$OPT/bin/python" ] || run "$PYTHON" -m venv "$OPT"
    run "$OPT/bin/python" -m pip install --quiet --upgrade pip
    # the two ONNX Runtime builds install the same package: the one not wanted goes first
    ! "$OPT/bin/python" -m pip show --quiet "$other" 2>/dev/null || run "$OPT/bin/python" -m pip uninstall --quiet -y "$other"
    run "$OPT/bin/python" -m pip install --quiet --upgrade "$SRC$extra"
    if [ "$DRY_RUN" = 0 ]; then printf '%s\n' "$stamp" > "$OPT/.edge-monitor-source"; else say "would write $OPT/.edge-monitor-source"; fi
    CHANGED_SERVICE=1
  fi
fi

# ------------------------------------------------------------------------------------ model bundle

# The state directory belongs to the service user (it writes the alarm state file there); bundles
# stay root's, readable by the service (and read-only in its sandbox). Each bundle has its own
# directory, bundles/<model id>, and `bundle` is a symlink to the one in use: a new bundle is
# installed beside the old one and the link switched in one rename, so a running monitor never
# reads a half-copied bundle and a reload (below) swaps the model without a restart. The bundle
# before it stays for a rollback (`ln -sfn bundles/<id> bundle.new && mv -T bundle.new bundle`,
# then `systemctl reload edge-monitor`); older ones are removed.
make_dir "$PREFIX/var/lib"
ensure_dir "$STATE" 0750 "$SERVICE_USER:$SERVICE_USER"
ensure_dir "$STATE/bundles" 0750 "root:$SERVICE_USER"
bundle_id() { sed -n 's/^ *"model_id": *"\([0-9a-f]*\)".*/\1/p' "$1/bundle.json" | head -n 1; }
NEW_ID=$(bundle_id "$BUNDLE")
[ -n "$NEW_ID" ] || die "--bundle $BUNDLE: bundle.json has no model_id; save it with \`python -m training fit\`"
CURRENT=
if [ -L "$STATE/bundle" ]; then
  CURRENT=$(readlink "$STATE/bundle")
elif [ -d "$STATE/bundle" ]; then  # an installation from before bundles/: moved there, then linked
  OLD_ID=$(bundle_id "$STATE/bundle")
  [ -n "$OLD_ID" ] || OLD_ID=old-$(date +%s)
  [ -e "$STATE/bundles/$OLD_ID" ] && run rm -rf "$STATE/bundles/$OLD_ID"
  run mv "$STATE/bundle" "$STATE/bundles/$OLD_ID"
  run ln -sfn "bundles/$OLD_ID" "$STATE/bundle"
  CURRENT=bundles/$OLD_ID
fi
CHANGED_BUNDLE=0
if [ "$CURRENT" = "bundles/$NEW_ID" ] && diff -r -q "$BUNDLE" "$STATE/bundles/$NEW_ID" >/dev/null 2>&1; then
  say "unchanged $STATE/bundle -> bundles/$NEW_ID"
else
  if ! diff -r -q "$BUNDLE" "$STATE/bundles/$NEW_ID" >/dev/null 2>&1; then
    run rm -rf "$STATE/bundles/.new" "$STATE/bundles/$NEW_ID"
    run cp -r "$BUNDLE" "$STATE/bundles/.new"
    if [ "$PRIVILEGED" = 1 ]; then
      run chown -R "root:$SERVICE_USER" "$STATE/bundles/.new"
      run chmod -R u=rwX,g=rX,o= "$STATE/bundles/.new"
    fi
    run mv "$STATE/bundles/.new" "$STATE/bundles/$NEW_ID"
  fi
  run ln -sfn "bundles/$NEW_ID" "$STATE/.bundle.new"
  run mv -T "$STATE/.bundle.new" "$STATE/bundle"
  CHANGED_BUNDLE=1
  # keep the bundle in use and the one before it
  for old in "$STATE"/bundles/*; do
    name=bundles/$(basename "$old")
    [ -d "$old" ] && [ "$name" != "bundles/$NEW_ID" ] && [ "$name" != "$CURRENT" ] && run rm -rf "$old"
  done
fi

# ------------------------------------------------------------------------------------ broker

# Scripts and templates, kept on the box to add machines later (make-users.sh MACHINE).
make_dir "$PREFIX/usr/local/share"
ensure_dir "$SHARE" 0755
ensure_dir "$SHARE/mosquitto" 0755
for f in acl bridge.conf.example edge-monitor.conf make-test-ca.sh make-users.sh save-while-small; do
  [ -f "$HERE/mosquitto/$f" ] || die "deploy/mosquitto/$f is missing from this checkout"
  mode=0644
  [ -x "$HERE/mosquitto/$f" ] && mode=0755
  put_file "$HERE/mosquitto/$f" "$SHARE/mosquitto/$f" "$mode"
done

make_dir "$PREFIX/etc"
make_dir "$PREFIX/etc/mosquitto"
make_dir "$MOSQ_CONFD"
ensure_dir "$MOSQ_DIR" 0755
sed -e "s|@CONFDIR@|$MOSQ_DIR|g" -e "s|@PORT@|$BROKER_PORT|g" -e "s|@TLS_PORT@|$TLS_PORT|g" \
  "$HERE/mosquitto/edge-monitor.conf" > "$WORK/edge-monitor.conf"
! grep -q '@[A-Z_]*@' "$WORK/edge-monitor.conf" ||
  die "deploy/mosquitto/edge-monitor.conf has a placeholder this script does not fill: $(grep -o '@[A-Z_]*@' "$WORK/edge-monitor.conf" | sort -u | tr '\n' ' ')"
put_file "$WORK/edge-monitor.conf" "$MOSQ_CONFD/edge-monitor.conf" 0644
[ "$CHANGED" = 1 ] && CHANGED_BROKER=1
put_file "$HERE/mosquitto/bridge.conf.example" "$MOSQ_DIR/bridge.conf.example" 0644

# Users and passwords: made once (make-users.sh writes new password hashes every time it runs);
# again only when a --machine is not a user yet. --no-replay: a box installed here has no demo user
# `replay` (which may publish as any machine); one made by hand with make-users.sh --replay is
# deleted when this runs make-users.sh.
ensure_dir "$ETC" 0755
group_opt=()
monitor_owner=()
if [ "$PRIVILEGED" = 1 ]; then
  monitor_owner=(--monitor-owner "$SERVICE_USER:$SERVICE_USER")
else
  group_opt=(--broker-group '')  # no chgrp under --prefix, even when run as root
fi
need_users=0
[ -f "$MOSQ_DIR/passwd" ] && [ -s "$SECRETS/edge-monitor.password" ] || need_users=1
for m in "${MACHINES[@]}"; do
  [ -f "$MOSQ_DIR/passwd" ] && grep -q "^daq-$m:" "$MOSQ_DIR/passwd" || need_users=1
done
if [ "$need_users" = 1 ]; then
  run "$HERE/mosquitto/make-users.sh" --confdir "$MOSQ_DIR" --secrets "$SECRETS" --root "$ROOT" --no-replay \
    "${group_opt[@]}" "${monitor_owner[@]}" "${MACHINES[@]}"
  CHANGED_BROKER=1
  CHANGED_SERVICE=1
else
  say "unchanged broker users in $MOSQ_DIR/passwd (add machines: $SHARE/mosquitto/make-users.sh MACHINE)"
fi
# A test CA for a first install: a production box puts its plant's certificates there instead.
# The CA's private key goes to $ETC/test-ca (root only), not into the broker's certs/: with
# use_identity_as_username it would sign in as any user. A key that an earlier install left in
# certs/ is moved there.
if [ -f "$MOSQ_DIR/certs/server.crt" ] && [ -f "$MOSQ_DIR/certs/server.key" ] && [ ! -f "$MOSQ_DIR/certs/ca.key" ]; then
  say "unchanged TLS certificates in $MOSQ_DIR/certs"
else
  run "$HERE/mosquitto/make-test-ca.sh" "${group_opt[@]}" --ca-key-dir "$ETC/test-ca" "$MOSQ_DIR/certs"
  CHANGED_BROKER=1
fi

# ------------------------------------------------------------------------------------ configuration

if [ -f "$ETC/config.yaml" ]; then
  say "unchanged $ETC/config.yaml (an installed configuration is never overwritten)"
else
  # The project's config.yaml with the installed values; each value replaced in place, its comment
  # kept in its column. Fails (naming the key) if a key is no longer where this expects it. A key
  # SECTION.KEY is the first `  KEY:` line below the top-level `SECTION:` line; any other key is the
  # first line starting with it.
  sets="  host=127.0.0.1
  port=$BROKER_PORT
  username=edge-monitor
  password_file=secrets/edge-monitor.password
  output_username=edge-monitor-out
  output_password_file=secrets/edge-monitor-out.password
topic_root=$ROOT
bundle=$STATE/bundle
state_file=$STATE/alarm-state.json
sparkplug.username=edge-monitor-sparkplug
sparkplug.password_file=secrets/edge-monitor-sparkplug.password"
  {
    echo "# edge-monitor configuration, installed by deploy/install.sh from the project's config.yaml."
    echo "# Edit freely: the installer never overwrites this file. Then: systemctl restart edge-monitor"
    echo "# Relative paths are relative to this file's directory. Topics and payloads: docs/protocol.md."
    echo
    sed '1,/^$/d' "$SRC/config.yaml" | awk -v sets="$sets" '
      BEGIN { n = split(sets, pairs, "\n")
              for (i = 1; i <= n; i++) { eq = index(pairs[i], "="); want[substr(pairs[i], 1, eq - 1)] = substr(pairs[i], eq + 1) } }
      /^[A-Za-z_]+:/ { section = substr($0, 1, index($0, ":") - 1) }
      { for (k in want) {
          dot = index(k, "."); line_key = dot ? "  " substr(k, dot + 1) : k
          if (!(k in done) && (!dot || substr(k, 1, dot - 1) == section) && index($0, line_key ": ") == 1) {
            rest = substr($0, length(line_key) + 3); c = index(rest, "#"); v = want[k]
            pad = c - 1 - length(v); if (pad < 1) pad = 1
            $0 = line_key ": " v (c ? sprintf("%" pad "s", "") substr(rest, c) : ""); done[k] = 1
          }
        }
        print }
      END { for (k in want) if (!(k in done)) { print "no line \"" k ":\"" > "/dev/stderr"; exit 3 } }'
  } > "$WORK/config.yaml" || die "config.yaml of this checkout: a key this script sets is missing (above)"
  put_file "$WORK/config.yaml" "$ETC/config.yaml" 0640 "$SERVICE_USER"
  CHANGED_SERVICE=1
fi
if [ "$DRY_RUN" = 0 ]; then  # the daemon's own validation, so that a broken file fails here, not at boot
  "$OPT/bin/python" -c 'import sys; from edge_monitor.service.config import load_config; load_config(sys.argv[1])' "$ETC/config.yaml" ||
    die "$ETC/config.yaml does not load (above); fix it, then run install.sh again"
  say "checked $ETC/config.yaml"
fi

# ------------------------------------------------------------------------------------ systemd unit

# edge-monitor.service, and the template edge-monitor@.service for several instances on this box
# (docs/deploy.md, "Several instances"; installed, not enabled: an instance needs its own config).
for unit in edge-monitor.service edge-monitor@.service; do
  if [ -n "$PREFIX" ]; then  # the paths the service uses, moved into the prefix
    sed -e "/^#/!s|/opt/edge-monitor|$OPT|g" -e "/^#/!s|/etc/edge-monitor|$ETC|g" -e "/^#/!s|/var/lib/edge-monitor|$STATE|g" \
      "$HERE/$unit" > "$WORK/$unit"
  else
    cp "$HERE/$unit" "$WORK/$unit"
  fi
done
make_dir "$PREFIX/etc/systemd"
make_dir "$UNIT_DIR"
put_file "$WORK/edge-monitor@.service" "$UNIT_DIR/edge-monitor@.service" 0644
CHANGED_TEMPLATE=$CHANGED
put_file "$WORK/edge-monitor.service" "$UNIT_DIR/edge-monitor.service" 0644
CHANGED_UNIT=$CHANGED
# The broker's database saved every 5 s while it is small (save-while-small says why).
sed -e "/^#/!s|/usr/local/share/edge-monitor|$SHARE|g" \
  "$HERE/mosquitto/edge-monitor-broker-save.service" > "$WORK/edge-monitor-broker-save.service"
put_file "$WORK/edge-monitor-broker-save.service" "$UNIT_DIR/edge-monitor-broker-save.service" 0644
[ "$CHANGED" = 1 ] && CHANGED_UNIT=1 && CHANGED_SAVER=1

# ------------------------------------------------------------------------------------ enable, start

if [ "$PRIVILEGED" = 0 ]; then
  say "skipped (--prefix): systemctl enable --now mosquitto.service edge-monitor.service edge-monitor-broker-save.service"
elif [ ! -d /run/systemd/system ]; then
  say "skipped (systemd is not PID 1 here: $(ps -o comm= -p 1 2>/dev/null || echo unknown)): systemctl enable --now mosquitto.service edge-monitor.service edge-monitor-broker-save.service"
else
  if [ "$CHANGED_UNIT" = 1 ] || [ "$CHANGED_TEMPLATE" = 1 ]; then run systemctl daemon-reload; fi
  if [ "$CHANGED_TEMPLATE" = 1 ] && systemctl list-units --quiet --no-legend 'edge-monitor@*.service' | grep -q .; then
    say "edge-monitor@.service changed: its running instances take it at their next restart (systemctl restart 'edge-monitor@*')"
  fi
  run systemctl enable mosquitto.service edge-monitor.service edge-monitor-broker-save.service
  if [ "$CHANGED_BROKER" = 1 ]; then run systemctl restart mosquitto.service; else run systemctl start mosquitto.service; fi
  if [ "$CHANGED_SAVER" = 1 ]; then run systemctl restart edge-monitor-broker-save.service
  else run systemctl start edge-monitor-broker-save.service; fi
  if [ "$CHANGED_SERVICE" = 1 ] || [ "$CHANGED_UNIT" = 1 ] || [ "$CHANGED_BROKER" = 1 ]; then
    run systemctl restart edge-monitor.service
  elif [ "$CHANGED_BUNDLE" = 1 ] && systemctl is-active --quiet edge-monitor.service; then
    # Only the model changed: the monitor switches between two windows, keeping its open cuts
    # (docs/deploy.md, "Reload"); the outcome shows in its status line.
    before=$(systemctl show -p StatusText --value edge-monitor.service)
    run systemctl reload edge-monitor.service
    if [ "$DRY_RUN" = 0 ]; then
      # The unit is "reloading" from the monitor's RELOADING=1 to its READY=1; its status line
      # then names the model in use, or says why the reload failed (a failure's line may also be
      # left from an earlier attempt: only one seen after this reload began counts).
      outcome= began=0
      for _ in $(seq 600); do
        state=$(systemctl show -p ActiveState --value edge-monitor.service)
        outcome=$(systemctl show -p StatusText --value edge-monitor.service)
        [ "$state" = reloading ] && began=1
        case $outcome in *"model $NEW_ID"*) break ;; esac
        if [ "$state" != reloading ] && { [ "$began" = 1 ] || [ "$outcome" != "$before" ]; }; then
          case $outcome in "reload failed"*) break ;; esac
        fi
        sleep 0.5
      done
      case $outcome in
        *"model $NEW_ID"*) say "reloaded: the monitor runs model $NEW_ID" ;;
        *"cuts windows differently"*)  # cannot take over open cuts: a restart (they start afresh)
          say "model $NEW_ID windows cuts differently from the running one: restarting the monitor"
          run systemctl restart edge-monitor.service ;;
        *)
          if [ -n "$CURRENT" ]; then  # the link back, so that a restart does not start a bundle that failed
            run ln -sfn "$CURRENT" "$STATE/.bundle.new"
            run mv -T "$STATE/.bundle.new" "$STATE/bundle"
          fi
          die "the monitor did not switch to model $NEW_ID, it runs on ${CURRENT:-the one before}: ${outcome:-no answer within 5 minutes} (journalctl -u edge-monitor); fix the bundle and run install.sh again" ;;
      esac
    fi
  else
    run systemctl start edge-monitor.service
  fi
fi

# ------------------------------------------------------------------------------------ check

# `edge-monitor check` (docs/deploy.md, "Checking an installation"), as the service user: the
# configuration, the bundle and its model (the TensorFlow step the unit's ExecStartPre leaves out),
# the state directory, the broker's listeners (a WARN line, not a failure, for one that lets a
# client choose its id), the broker logins and the ACL. The logins are skipped while the monitor
# runs (logging in as its users would take over its connections); the unit's ExecStartPre ran them
# before the monitor started. Where this script starts no broker (--prefix, no systemd), a broker
# that cannot be reached is not a failure.
check=("$OPT/bin/edge-monitor" check --config "$ETC/config.yaml")
if [ "$PRIVILEGED" = 0 ] || [ ! -d /run/systemd/system ]; then check+=(--broker-may-be-down); fi
# The broker's listeners: Debian's /etc/mosquitto/mosquitto.conf (the check's default); under
# --prefix no main configuration is installed, so the drop-in's own listeners.
if [ "$PRIVILEGED" = 0 ]; then check+=(--broker-conf "$MOSQ_CONFD/edge-monitor.conf"); fi
if [ "$PRIVILEGED" = 1 ]; then check=(runuser -u "$SERVICE_USER" -- "${check[@]}"); fi
if [ "$DRY_RUN" = 1 ]; then
  run "${check[@]}"
else
  say "checking the installation:$(printf ' %q' "${check[@]}")"
  "${check[@]}" || die "the installation fails its check (the FAIL lines above): fix that, then run install.sh again"
fi

say "done$([ "$DRY_RUN" = 1 ] && echo " (dry run: nothing was changed)")"
