#!/usr/bin/env bash
# The phone side of the README's five-minute tour, played by SIPp (Debian: sip-tester).
#
#   phones.sh register NUMBER PASSWORD          NUMBER's phone registers with the PBX
#   phones.sh call FROM PASSWORD TO             FROM calls TO, whose phone answers; they
#                                               talk for $TALK seconds, FROM hangs up
#   phones.sh dial FROM PASSWORD NUMBER         FROM dials NUMBER (a feature code such as
#                                               *72...) and shows the PBX's answer
#   phones.sh hijack FROM PASSWORD TO TARGET    TO's hijacked phone answers FROM's call
#                                               with a 302 to TARGET; a carrier waits at
#                                               $CARRIER to see whether the PBX calls it
#
# PASSWORD is the one `pbxwarden extension add` printed. Where things are (defaults):
#   PBX=127.0.0.1:5060         the PBX's SIP address (`serve --sip`)
#   CARRIER=127.0.0.2:5070     the trunk's address (`trunk add carrier --host --port`)
#   PHONE_<NUMBER>=HOST:PORT   where NUMBER's phone lives: 127.0.0.1:(20000 + NUMBER % 10000)
#   TALK=20                    seconds a call lasts
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PBX="${PBX:-127.0.0.1:5060}"
CARRIER="${CARRIER:-127.0.0.2:5070}"
TALK="${TALK:-20}"

die() { echo "phones.sh: $*" >&2; exit 1; }
usage() { sed -n '3,12s/^# \{0,1\}//p' "$0" >&2; exit 2; }

command -v sipp >/dev/null 2>&1 || die "SIPp is not installed (Debian package sip-tester)"
[[ "$PBX" =~ ^[0-9.]+:[0-9]+$ ]] || die "PBX=$PBX is not HOST:PORT"
[[ "$CARRIER" =~ ^[0-9.]+:[0-9]+$ ]] || die "CARRIER=$CARRIER is not HOST:PORT"
[[ "$TALK" =~ ^[0-9]+$ ]] || die "TALK=$TALK is not a number of seconds"
DOMAIN="${PBX%:*}"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP  # the EXIT trap then runs too

number() { [[ "$1" =~ ^[0-9]+$ ]] || die "$1 is not an extension number"; }

phone() {  # NUMBER -> HOST:PORT of its phone
  local var="PHONE_$1"
  local addr="${!var:-127.0.0.1:$((20000 + 10#$1 % 10000))}"
  [[ "$addr" =~ ^[0-9.]+:[0-9]+$ ]] || die "$var=$addr is not HOST:PORT"
  echo "$addr"
}

listening() {  # HOST:PORT -> is a UDP socket bound there? (/proc: no ss needed)
  local host="${1%:*}" port="${1##*:}" a b c d
  IFS=. read -r a b c d <<<"$host"
  local want
  want="$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$port")"
  awk -v want="$want" 'NR > 1 && $2 == want { found = 1 } END { exit !found }' /proc/net/udp
}

wait_listening() {  # HOST:PORT PID: until SIPp has bound, at most 10 s
  local deadline=$((SECONDS + 10))
  until listening "$1"; do
    kill -0 "$2" 2>/dev/null || die "SIPp could not listen on $1 (in use?)"
    ((SECONDS < deadline)) || die "SIPp did not listen on $1 within 10 s"
    sleep 0.1
  done
}

# sipp NAME HOST:PORT ARGS...: one SIPp run in the foreground; its logs in $WORK/NAME*
sipp_run() {
  local name="$1" addr="$2"
  shift 2
  (cd "$WORK" && sipp -i "${addr%:*}" -p "${addr##*:}" -m 1 -nostdin -nd \
    -trace_msg -message_file "$WORK/$name.msg" -trace_err -error_file "$WORK/$name.err" \
    "$@" >"$WORK/$name.out" 2>&1)
}

# sipp_bg NAME HOST:PORT ARGS...: a SIPp phone waiting for a call, in the background
sipp_bg() {
  local name="$1" addr="$2"
  shift 2
  (cd "$WORK" && exec sipp -i "${addr%:*}" -p "${addr##*:}" -m 1 -nostdin -nd -key mark "$name" \
    -trace_err -error_file "$WORK/$name.err" "$@" >"$WORK/$name.out" 2>&1) &
  PIDS+=("$!")
  wait_listening "$addr" "$!"
}

final_answer() {  # NAME -> the last final SIP answer (3xx-6xx, or 200 to INVITE) it got
  awk '/^SIP\/2\.0 [2-6][0-9][0-9] / { line = $0 } /^CSeq: [0-9]+ INVITE/ && line { last = line }
       END { sub(/\r$/, "", last); print last }' "$WORK/$1.msg" 2>/dev/null
}

invited() {  # NAME [SECONDS]: was that phone called (waiting up to SECONDS for it)?
  local deadline=$((SECONDS + ${2:-0}))
  until [ -e "$WORK/$1.invited" ]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

failed() {  # NAME WHAT: say why a SIPp run failed
  echo "$2 failed:" >&2
  tail -n 5 "$WORK/$1.err" "$WORK/$1.out" 2>/dev/null >&2 || true
  exit 1
}

uac() {  # NAME FROM PASSWORD SERVICE SCENARIO ARGS...: FROM's phone sends to the PBX
  local name="$1" from="$2" password="$3" service="$4" scenario="$5"
  shift 5
  sipp_run "$name" "$(phone "$from")" "$PBX" -sf "$HERE/$scenario" -key domain "$DOMAIN" \
    -auth_uri "$DOMAIN" -key user "$from" -au "$from" -ap "$password" -s "$service" \
    -recv_timeout 10000 -timeout "$((TALK + 30))s" -timeout_error "$@"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  register)
    [ $# -eq 2 ] || usage
    number "$1"
    if ! uac register "$1" "$2" "$1" register.xml; then
      answer="$(awk '/^SIP\/2\.0 [3-6]/ { l = $0 } END { sub(/\r$/, "", l); print l }' \
        "$WORK/register.msg" 2>/dev/null)"
      die "$1 was not registered${answer:+: the PBX answered ${answer#SIP/2.0 }}"
    fi
    echo "$1 registered from $(phone "$1")"
    ;;
  call)
    [ $# -eq 3 ] || usage
    number "$1"; number "$3"
    sipp_bg callee "$(phone "$3")" -sf "$HERE/answer.xml" -timeout "$((TALK + 30))s"
    echo "$1 calls $3 (talking for $TALK s)"
    uac caller "$1" "$2" "$3" dial.xml -d "$((TALK * 1000))" || failed caller "the call"
    answer="$(final_answer caller)"
    case "$answer" in
      "SIP/2.0 200 "*) echo "$3 answered; $1 hung up after $TALK s" ;;
      *) die "$3 did not answer: the PBX said ${answer#SIP/2.0 }" ;;
    esac
    ;;
  dial)
    [ $# -eq 3 ] || usage
    number "$1"
    uac caller "$1" "$2" "$3" dial.xml -d 1000 || failed caller "dialling $3"
    answer="$(final_answer caller)"
    echo "the PBX answered $1 dialling $3: ${answer#SIP/2.0 }"
    ;;
  hijack)
    [ $# -eq 4 ] || usage
    number "$1"; number "$3"
    sipp_bg carrier "$CARRIER" -sf "$HERE/answer.xml" -timeout "$((TALK + 30))s"
    sipp_bg hijacked "$(phone "$3")" -sf "$HERE/redirect.xml" -key target "$4" -timeout 30s
    echo "$1 calls $3, whose phone answers with a 302 to $4"
    uac caller "$1" "$2" "$3" dial.xml -d 1000 || failed caller "the call"
    answer="$(final_answer caller)"
    invited hijacked 5 || die "the PBX did not ring $3's phone (the PBX said ${answer#SIP/2.0 })"
    echo "the PBX answered $1: ${answer#SIP/2.0 }"
    if [[ "$answer" == "SIP/2.0 200 "* ]] || invited carrier; then
      die "the PBX called the carrier at $CARRIER: the diversion went out"
    fi
    echo "the carrier at $CARRIER got no call"
    ;;
  *) usage ;;
esac
