#!/usr/bin/env bash
# Instructions per SMTP message in cmtpd's inbound gateway, counted by
# callgrind (repeatable on a noisy machine, unlike wall-clock rates).
#
#   bench/smtp-callgrind.sh [-m MESSAGES] [-s SESSIONS] [-l BYTES]
#                           [--cmtpd PATH] [--out FILE]
#
# Starts a throwaway cmtpd (the configuration of `postfix-compare.sh
# --smtp`: one account, loopback ports, no checks, no per-peer rate) under
# `valgrind --tool=callgrind`, feeds it with Postfix's smtp-source (first
# 20 messages as warm-up, then zeroes the counters), stops it with SIGTERM
# and prints the instructions per message of the measured part (user space
# only; the kernel's TCP and fsync are not counted). Needs valgrind and
# smtp-source (the postfix package). `callgrind_annotate --inclusive=yes
# FILE` shows where they went.
set -euo pipefail

MESSAGES=2000
SESSIONS=20
SIZE=4096
CMTPD=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        -m|--messages) MESSAGES=$2; shift 2 ;;
        -s|--sessions) SESSIONS=$2; shift 2 ;;
        -l|--size) SIZE=$2; shift 2 ;;
        --cmtpd) CMTPD=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMTP_SOURCE=/usr/sbin/smtp-source
for tool in valgrind callgrind_control python3; do
    command -v "$tool" >/dev/null || { echo "smtp-callgrind: needs $tool" >&2; exit 2; }
done
[ -x "$SMTP_SOURCE" ] || { echo "smtp-callgrind: needs $SMTP_SOURCE (postfix)" >&2; exit 2; }
if [ -z "$CMTPD" ]; then
    (cd "$ROOT" && cargo build --release -q -p cmtpd)
    CMTPD="${CARGO_TARGET_DIR:-$ROOT/target}/release/cmtpd"
fi

T=$(mktemp -d /tmp/smtp-callgrind.XXXXXX)
OUT=${OUT:-$T/callgrind.out}
cleanup() {
    set +e
    if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
    rm -rf "$T"
}
trap cleanup EXIT

# shellcheck source=bench/cmtpd-smtp-setup.sh
. "$ROOT/bench/cmtpd-smtp-setup.sh"
cmtpd_smtp_setup "$CMTPD" "$T" bench
valgrind --tool=callgrind --callgrind-out-file="$OUT" --collect-atstart=yes \
    "$CMTPD" --data-dir "$T" run > "$T/cmtpd.log" 2>&1 &
PID=$!
for _ in $(seq 600); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$SPORT),1)" 2>/dev/null && break
    sleep 0.2
done
send() {
    "$SMTP_SOURCE" -d -s "$1" -m "$2" -l "$SIZE" -f sender@example.org \
        -t "bench@cmtp.localdomain" "127.0.0.1:$SPORT"
}
send 2 20
callgrind_control --zero "$PID" >/dev/null 2>&1
start=$(date +%s.%N)
send "$SESSIONS" "$MESSAGES"
end=$(date +%s.%N)
callgrind_control --dump=measured "$PID" >/dev/null 2>&1
kill -TERM "$PID"
wait "$PID" 2>/dev/null || true
PID=""
# The dump of the measured part is part 1 (the rest, shutdown, is $OUT).
dump=$OUT.1
[ -f "$dump" ] || dump=$OUT
# (awk reads to the end: an early exit would fail the pipeline on SIGPIPE)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
python3 - "$total" "$MESSAGES" "$start" "$end" "$dump" <<'PY'
import sys
total, n, start, end, dump = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
print(f"{n} messages: {total:,} instructions, {total // n:,} per message "
      f"(under callgrind {n / (float(end) - float(start)):.0f} msg/s); profile: {dump}")
PY
if [ "$OUT" = "$T/callgrind.out" ]; then
    echo "(rerun with --out FILE to keep the profile)"
fi
