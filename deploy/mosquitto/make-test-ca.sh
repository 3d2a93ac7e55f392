#!/usr/bin/env bash
# TEST ONLY: a self-signed certificate authority, a server certificate for the edge broker's TLS
# listener and a client certificate, for a first install and for the tests. A production box uses
# certificates from the plant's PKI instead (same file names; see docs/deploy.md, "Broker").
#
#   make-test-ca.sh [--host NAME]... [--days N] [--force] [--broker-group G] [--ca-key-dir KEYDIR] DIR
#
# Writes into DIR (the broker's certs/):
#   ca.crt       the test CA: give it to SCADA clients (they verify the broker against it)
#   server.crt   the broker's certificate, for localhost, 127.0.0.1, ::1, this host's name and
#   server.key     every --host NAME (a DNS name or an IP address)
#   client.crt   a client certificate (CN scada), for brokers set to require_certificate true
#   client.key
# and into KEYDIR, never into DIR:
#   ca.key       the test CA's private key (mode 0600, KEYDIR 0700 when made here), and ca.srl.
#                Whoever holds it issues certificates this broker accepts; with
#                `require_certificate true` and `use_identity_as_username true` on a listener, a
#                certificate with any CN signs in as that user, no password asked. It is only
#                needed to issue more test certificates: delete it when you have them.
#                Default KEYDIR: /etc/edge-monitor/test-ca when run as root (where install.sh puts
#                it), otherwise ${XDG_DATA_HOME:-~/.local/share}/edge-monitor/test-ca. A ca.key
#                found in DIR (made by an earlier version of this script) is moved to KEYDIR.
# Idempotent: existing files are kept (--force makes them all anew); a certificate that has to be
# issued again (expiring within 30 days, or a new --host) is signed with KEYDIR/ca.key, or, when
# that key is gone, by a new test CA (then give SCADA clients the new ca.crt). Keys are RSA 2048
# (what every SCADA TLS stack accepts). --broker-group: group that may read server.key (mode
# 0640); default mosquitto when that group exists and the script runs as root.
set -euo pipefail

DAYS=825  # the longest validity Apple and browsers accept for a server certificate
HOSTS=()
FORCE=0
BROKER_GROUP=auto
DIR=
KEYDIR=

die() { echo "make-test-ca.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --host) HOSTS+=("${2:?--host needs a name or address}"); shift 2 ;;
    --days) DAYS=${2:?--days needs a number}; shift 2 ;;
    --force) FORCE=1; shift ;;
    --broker-group) BROKER_GROUP=${2?--broker-group needs a group (or '' for none)}; shift 2 ;;
    --ca-key-dir) KEYDIR=${2:?--ca-key-dir needs a directory}; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "make-test-ca.sh: unknown option $1" >&2; usage 2 ;;
    *) [ -z "$DIR" ] || die "one output directory only (got '$DIR' and '$1')"; DIR=$1; shift ;;
  esac
done
[ -n "$DIR" ] || usage 2
[[ $DAYS =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive number of days, got '$DAYS'"
command -v openssl >/dev/null || die "openssl not found: install the Debian package openssl"
if [ "$BROKER_GROUP" = auto ]; then
  BROKER_GROUP=
  if [ "$(id -u)" = 0 ] && getent group mosquitto >/dev/null; then BROKER_GROUP=mosquitto; fi
fi

if [ -z "$KEYDIR" ]; then
  if [ "$(id -u)" = 0 ]; then
    KEYDIR=/etc/edge-monitor/test-ca
  else
    [ -n "${XDG_DATA_HOME:-}" ] || [ -n "${HOME:-}" ] || die "HOME is not set: say where the CA key goes with --ca-key-dir KEYDIR"
    KEYDIR=${XDG_DATA_HOME:-$HOME/.local/share}/edge-monitor/test-ca
  fi
fi
DIR=$(realpath -m "$DIR")
KEYDIR=$(realpath -m "$KEYDIR")
case $KEYDIR/ in
  "$DIR"/*) die "--ca-key-dir $KEYDIR is inside $DIR: the CA key must not be where the broker's certificates are (any directory outside it)" ;;
esac
mkdir -p "$DIR"
umask 077
[ -d "$KEYDIR" ] || mkdir -p -m 0700 "$KEYDIR"  # 0700: only its owner may reach the key
cd "$DIR"
KEY=$KEYDIR/ca.key
if [ "$FORCE" = 1 ]; then rm -f ca.crt ca.key ca.srl server.crt server.key client.crt client.key "$KEY" "$KEYDIR/ca.srl"; fi

# An earlier version of this script kept the key beside the certificates: moved out of DIR.
if [ -f ca.key ]; then
  if [ -f "$KEY" ] && ! cmp -s ca.key "$KEY"; then
    die "two test CA keys, $DIR/ca.key and $KEY: keep the one that signed $DIR/ca.crt in $KEY and delete the other"
  fi
  mv ca.key "$KEY"
  [ ! -f ca.srl ] || mv ca.srl "$KEYDIR/ca.srl"
  echo "moved the test CA's key out of the broker's folder: $DIR/ca.key -> $KEY"
fi

# subjectAltName: what clients check the broker's name against (the CN is ignored by modern TLS).
san="DNS:localhost,IP:127.0.0.1,IP:::1"
self=$(hostname 2>/dev/null || true)
NAMES=(localhost 127.0.0.1 ::1 ${self:+"$self"} "${HOSTS[@]}")
for name in ${self:+"$self"} "${HOSTS[@]}"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
done

# usable NAME [SAN NAMES...]: NAME.crt and its key exist, were issued by ca.crt, are valid for 30
# more days and cover every given name.
usable() {
  local name=$1 host; shift
  [ -f "$name.crt" ] && [ -f "$name.key" ] && [ -f ca.crt ] || return 1
  openssl verify -CAfile ca.crt "$name.crt" >/dev/null 2>&1 || return 1
  openssl x509 -in "$name.crt" -noout -checkend 2592000 >/dev/null || return 1
  for host in "$@"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then
      openssl x509 -in "$name.crt" -noout -checkip "$host" | grep -q "does match" || return 1
    else
      openssl x509 -in "$name.crt" -noout -checkhost "$host" | grep -q "does match" || return 1
    fi
  done
}

# A new test CA when there is none, or when a certificate must be issued and the CA's key is gone.
if [ ! -f ca.crt ] || { { ! usable server "${NAMES[@]}" || ! usable client; } && [ ! -f "$KEY" ]; }; then
  [ ! -f ca.crt ] || echo "no key of test CA $DIR/ca.crt in $KEYDIR to issue certificates with: a new test CA (give SCADA clients the new ca.crt)"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$DAYS" -keyout "$KEY" -out ca.crt \
    -subj "/O=edge-monitor/CN=edge-monitor TEST CA - not for production" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  rm -f "$KEYDIR/ca.srl"
  echo "created test CA $DIR/ca.crt (key $KEY)"
  rm -f server.crt client.crt  # issued by a CA that no longer exists
else
  echo "kept test CA $DIR/ca.crt"
fi
if [ -f "$KEY" ]; then
  [ "$(openssl x509 -in ca.crt -noout -pubkey)" = "$(openssl pkey -in "$KEY" -pubout 2>/dev/null)" ] ||
    die "$KEY is not the key of $DIR/ca.crt: put that CA's key there, or delete $KEY to make a new test CA"
  chmod 0600 "$KEY"
fi

# issue NAME CN EXTENSIONS [SAN NAMES...]: a key and a certificate signed by the test CA, unless a
# usable one exists.
issue() {
  local name=$1 cn=$2 ext=$3; shift 3
  if usable "$name" "$@"; then
    echo "kept $DIR/$name.crt"
    return
  fi
  openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" \
    -subj "/O=edge-monitor TEST/CN=$cn" 2>/dev/null
  printf '%s\n' "$ext" > "$name.ext"
  openssl x509 -req -sha256 -days "$DAYS" -in "$name.csr" -CA ca.crt -CAkey "$KEY" \
    -CAserial "$KEYDIR/ca.srl" -CAcreateserial \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  chmod 0644 "$name.crt"
  echo "created $DIR/$name.crt (key $DIR/$name.key) for CN=$cn"
}

issue server "${self:-localhost}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san" "${NAMES[@]}"
issue client scada "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

chmod 0644 ca.crt
chmod 0600 client.key
if [ -n "$BROKER_GROUP" ]; then
  chgrp "$BROKER_GROUP" server.key
  chmod 0640 server.key
else
  chmod 0600 server.key
fi
openssl verify -CAfile ca.crt server.crt client.crt >/dev/null || die "the issued certificates do not verify"
echo "TEST CERTIFICATES ONLY; server certificate valid for: ${san//,/ }"
if [ -f "$KEY" ]; then
  echo "the test CA's private key is $KEY (not in $DIR): whoever holds it can issue certificates this broker" \
    "accepts (with use_identity_as_username, for any user); delete it once you need no more test certificates"
fi
