#!/usr/bin/env bash
# Every measurement of docs/BENCHMARKS.md, in one go:
#
#   bench/run-all.sh [OUT_DIR] [REPEAT]      (default: bench-results/, 3)
#
# Builds cmtp-bench, cmtpd and cmtp (release), then runs each scenario REPEAT times
# on fresh servers (median and spread in the printed tables; everything in
# OUT_DIR/*.json): mail (SQLite, and PostgreSQL when its binaries are
# installed), KEYREQUEST and KEYPROOF, idle, bigmail, relay, handshake, the
# mail program's sync and search, a stranger's attack; the instructions per
# message under callgrind next to the floor (bench/mail-callgrind.sh), the
# hardware limits (crypto, pg_test_fsync when PostgreSQL's binaries are
# installed), and the Postfix side-by-sides when Postfix is installed and the
# script runs as root (bench/postfix-compare.sh, POSTFIX_REPEAT alternating
# runs, 5 unless set, over CMTP and over cmtpd's SMTP gateway; add --install
# there to get it). Not run here: the key-transparency directory benchmark,
# `keyrequest --proof --after-epoch`, `client -m 100000` and
# bench/smtp-callgrind.sh (docs/BENCHMARKS.md, "Commands"). Takes about 30
# minutes on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/bench-results}
REPEAT=${2:-3}
mkdir -p "$OUT"
cd "$ROOT"
cargo build --release -q -p cmtp-bench -p cmtpd -p cmtp
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
B="$TARGET/release/cmtp-bench"
POSTFIX_REPEAT=${POSTFIX_REPEAT:-5}

{
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo
    echo "kernel: $(uname -r)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    df -h "${TMPDIR:-/tmp}" | tail -1
} | tee "$OUT/machine.txt"

run() {
    local name=$1; shift
    echo "== $name: cmtp-bench $*"
    "$B" "$@" --repeat "$REPEAT" --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}

run crypto crypto
run mail mail
# The throwaway cluster needs the server's binaries (initdb, pg_ctl, postgres).
if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/postgres" ] \
    && [ -x "$(pg_config --bindir)/initdb" ] && [ -x "$(pg_config --bindir)/pg_ctl" ]; then
    run mail-postgres mail --store postgres
fi
run keyrequest keyrequest
run keyproof keyrequest --proof
run idle idle
run bigmail bigmail
run relay relay
# The same with the relay queue polled every 100 ms instead of every second.
run relay-poll100 relay --poll-ms 100
run handshake handshake
run client client
run search search
# A stranger's attack for 60 s while a legitimate user logs in and sends
# (one run: it takes a minute). Its default of 128 slow connections from
# each of 200 addresses needs 25,876 open files; under a lower hard limit
# fewer per address (90 fit in 20,000), and none below 4,000.
HARD=$(ulimit -Hn)
ABUSE_ARGS=()
if [ "$HARD" != unlimited ] && [ "$HARD" -lt 30000 ]; then
    PER_ADDR=$(( (HARD - 2000) / 200 ))
    if [ "$PER_ADDR" -gt 90 ]; then PER_ADDR=90; fi
    ABUSE_ARGS=(--drip-per-addr "$PER_ADDR")
fi
if [ "$HARD" = unlimited ] || [ "$HARD" -ge 4000 ]; then
    "$B" abuse ${ABUSE_ARGS[@]+"${ABUSE_ARGS[@]}"} --json "$OUT/abuse.json" | tee "$OUT/abuse.txt"
else
    echo "== abuse skipped: the hard open-file limit ($HARD) is under 4,000"
fi

if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/pg_test_fsync" ]; then
    echo "== pg_test_fsync in ${TMPDIR:-/tmp}"
    (cd "${TMPDIR:-/tmp}" && "$(pg_config --bindir)/pg_test_fsync" -s 2) | tee "$OUT/pg_test_fsync.txt"
fi
if command -v valgrind >/dev/null && command -v python3 >/dev/null; then
    "$ROOT/bench/mail-callgrind.sh" --bench "$B" | tee "$OUT/mail-callgrind.txt"
fi
if command -v postfix >/dev/null && [ -x /usr/sbin/smtp-source ] && [ "$(id -u)" = 0 ]; then
    "$ROOT/bench/postfix-compare.sh" -r "$POSTFIX_REPEAT" --bench "$B" --json "$OUT/postfix.json" | tee "$OUT/postfix.txt"
    "$ROOT/bench/postfix-compare.sh" --smtp -r "$POSTFIX_REPEAT" --cmtpd "$TARGET/release/cmtpd" --json "$OUT/postfix-smtp.json" | tee "$OUT/postfix-smtp.txt"
else
    echo "== Postfix not installed (or not root): bench/postfix-compare.sh --install for the side-by-side"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
