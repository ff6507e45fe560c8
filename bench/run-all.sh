#!/usr/bin/env bash
# Every measurement of docs/BENCHMARKS.md, in one go:
#
#   bench/run-all.sh [OUT_DIR] [REPEAT]      (default: bench-results/, 3)
#
# Builds cmtp-bench and cmtp (release), then runs each scenario REPEAT times
# on fresh servers (median and spread in the printed tables; everything in
# OUT_DIR/*.json): mail (SQLite, and PostgreSQL when its binaries are
# installed), KEYREQUEST and KEYPROOF, idle, bigmail, relay, handshake, the
# mail program's sync and search, a stranger's attack; the instructions per
# message under callgrind next to the floor (bench/mail-callgrind.sh), the
# hardware limits (crypto, pg_test_fsync when PostgreSQL's binaries are
# installed), and the Postfix side-by-sides when Postfix is installed
# (bench/postfix-compare.sh, POSTFIX_REPEAT alternating runs, 5 unless set,
# over CMTP and over cmtpd's SMTP gateway; add --install there to get it).
# Takes about 45 minutes on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/bench-results}
REPEAT=${2:-3}
mkdir -p "$OUT"
cd "$ROOT"
cargo build --release -q -p cmtp-bench -p cmtpd -p cmtp
B="$ROOT/target/release/cmtp-bench"
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
if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/postgres" ]; then
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
# (one run: it takes a minute and 25,000+ connections; with a hard
# open-file limit under 30,000, 90 slow connections per address instead
# of the default, which fits in 20,000).
ABUSE_ARGS=()
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt 30000 ]; then
    ABUSE_ARGS=(--drip-per-addr 90)
fi
"$B" abuse "${ABUSE_ARGS[@]}" --json "$OUT/abuse.json" | tee "$OUT/abuse.txt"

if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/pg_test_fsync" ]; then
    echo "== pg_test_fsync in ${TMPDIR:-/tmp}"
    (cd "${TMPDIR:-/tmp}" && "$(pg_config --bindir)/pg_test_fsync" -s 2) | tee "$OUT/pg_test_fsync.txt"
fi
if command -v valgrind >/dev/null; then
    "$ROOT/bench/mail-callgrind.sh" --bench "$B" | tee "$OUT/mail-callgrind.txt"
fi
if command -v postfix >/dev/null && [ -x /usr/sbin/smtp-source ] && [ "$(id -u)" = 0 ]; then
    "$ROOT/bench/postfix-compare.sh" -r "$POSTFIX_REPEAT" --bench "$B" --json "$OUT/postfix.json" | tee "$OUT/postfix.txt"
    "$ROOT/bench/postfix-compare.sh" --smtp -r "$POSTFIX_REPEAT" --bench "$B" --json "$OUT/postfix-smtp.json" | tee "$OUT/postfix-smtp.txt"
else
    echo "== Postfix not installed (or not root): bench/postfix-compare.sh --install for the side-by-side"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
