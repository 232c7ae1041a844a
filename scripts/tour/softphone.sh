#!/usr/bin/env bash
# A softphone for the README's tour instead of SIPp: baresip (Debian: baresip-core) as
# extension NUMBER, registered with the PBX; type /dial 2000, /hangup, /quit.
#
#   softphone.sh NUMBER PASSWORD
#
# PBX=127.0.0.1:5060 as for phones.sh. It listens on BARESIP_LISTEN, by default
# 127.0.0.1:(30000 + NUMBER % 10000), and on the next port (baresip's TLS), and answers
# calls at once (null audio).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PBX="${PBX:-127.0.0.1:5060}"

die() { echo "softphone.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || { sed -n '5p' "$0" | sed 's/^# *//' >&2; exit 2; }
[[ "$1" =~ ^[0-9]+$ ]] || die "$1 is not an extension number"
[[ "$2" =~ ^[^\;\>\<[:space:]]+$ ]] || die "the password cannot go into a baresip account line"
[[ "$PBX" =~ ^[0-9.]+:[0-9]+$ ]] || die "PBX=$PBX is not HOST:PORT"
command -v baresip >/dev/null 2>&1 || die "baresip is not installed (Debian package baresip-core)"

dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' INT TERM HUP  # the EXIT trap then runs too
listen="${BARESIP_LISTEN:-127.0.0.1:$((30000 + 10#$1 % 10000))}"
[[ "$listen" =~ ^[0-9.]+:[0-9]+$ ]] || die "BARESIP_LISTEN=$listen is not HOST:PORT"
sed -e "s/^sip_listen.*/sip_listen\t\t$listen/" -e "s/^net_interface.*/net_interface\t\t${listen%:*}/" \
  "$HERE/baresip/config" >"$dir/config"
(umask 077 && printf '<sip:%s@%s;transport=udp>;auth_pass=%s;regint=600;answermode=auto\n' \
  "$1" "$PBX" "$2" >"$dir/accounts")
: >"$dir/contacts"
echo "baresip as $1 on $listen, registering with $PBX: /dial NUMBER, /hangup, /quit"
baresip -f "$dir"
