#!/usr/bin/env bash
# Server instructions per accepted CMTP message, counted by callgrind, next
# to the floor of what no server can avoid: the SHA-256 of the message and
# one Ed25519 signature (the signed reply that is also the receipt).
#
#   bench/mail-callgrind.sh [-m MESSAGES] [-c CONNECTIONS] [-s BYTES]
#                           [--bench PATH] [--keep DIR]
#
# Runs `cmtp-bench mail` twice with its own server (SQLite, durable SUCCESS)
# under `valgrind --tool=callgrind`: M and then 2M messages over the same
# connections and accounts, so that everything but the messages (start-up,
# logins, shutdown) cancels out in the difference. Runs `cmtp-bench crypto
# --floor` the same way with F and 2F iterations at the same message size.
# Prints the instructions per message, the floor and their ratio. User space
# only: the kernel's TCP, WAL writes and fsyncs are not counted (perf stat
# counts them where the machine supports it). `--keep DIR` keeps the
# callgrind files; `callgrind_annotate --inclusive=yes FILE` shows where the
# instructions went. valgrind counts glibc's `rep movsb` copies once per
# byte (a 4 KiB page: 4,096); with GLIBC_TUNABLES=
# glibc.cpu.x86_rep_movsb_threshold=4194304 in the environment glibc copies
# in AVX loops instead, which counts closer to the processor's work
# (docs/BENCHMARKS.md, issue 17 continued (3) and (4)).
set -euo pipefail

MESSAGES=2000
CONNECTIONS=20
SIZE=4096
FLOOR=2000
BENCH=""
KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        -m|--messages) MESSAGES=$2; shift 2 ;;
        -c|--connections) CONNECTIONS=$2; shift 2 ;;
        -s|--size) SIZE=$2; shift 2 ;;
        --bench) BENCH=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
for tool in valgrind python3; do
    command -v "$tool" >/dev/null || { echo "mail-callgrind: needs $tool" >&2; exit 2; }
done
if [ -z "$BENCH" ]; then
    (cd "$ROOT" && cargo build --release -q -p cmtp-bench)
    BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/cmtp-bench"
fi

T=$(mktemp -d /tmp/mail-callgrind.XXXXXX)
cleanup() {
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$T"/*.out "$KEEP"/ 2>/dev/null; fi
    rm -rf "$T"
}
trap cleanup EXIT

# The total instructions of a callgrind output file.
total() {
    python3 - "$1" <<'EOF'
import sys
for line in open(sys.argv[1]):
    if line.startswith(("summary:", "totals:")):
        print(int(line.split()[1]))
        break
else:
    sys.exit("no totals in " + sys.argv[1])
EOF
}

# mail N: the server's instructions for N messages; the wire size in $T/wire.
mail() {
    local out="$T/mail-$1.out"
    "$BENCH" mail -m "$1" -c "$CONNECTIONS" -s "$SIZE" --json "$T/mail-$1.json" \
        --server-wrapper "valgrind --tool=callgrind --callgrind-out-file=$out" \
        > "$T/mail-$1.txt" 2>&1 || { cat "$T/mail-$1.txt" >&2; exit 1; }
    python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["median"]["message_wire_size"]))' \
        "$T/mail-$1.json" > "$T/wire"
    total "$out"
}

# floor N: the instructions of N floors (plus the program's fixed cost).
floor() {
    local out="$T/floor-$1.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BENCH" crypto --floor "$1" --floor-bytes "$(cat "$T/wire")" > /dev/null 2>&1
    total "$out"
}

m1=$(mail "$MESSAGES")
m2=$(mail $((MESSAGES * 2)))
wire=$(cat "$T/wire")
f1=$(floor "$FLOOR")
f2=$(floor $((FLOOR * 2)))
python3 - "$MESSAGES" "$m1" "$m2" "$FLOOR" "$f1" "$f2" "$wire" "$CONNECTIONS" <<'EOF'
import sys
m, m1, m2, f, f1, f2, wire, conns = map(int, sys.argv[1:])
per_msg = (m2 - m1) / m
per_floor = (f2 - f1) / f
print(f"messages: {m} and {2 * m} over {conns} connections, {wire} bytes on the wire each")
print(f"server instructions per message: {per_msg:,.0f}")
print(f"floor (SHA-256 of the message + one Ed25519 signature): {per_floor:,.0f}")
print(f"ratio: {per_msg / per_floor:.2f}x the floor (target: at most 1.5x)")
EOF
