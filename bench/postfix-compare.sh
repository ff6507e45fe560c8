#!/usr/bin/env bash
# cmtpd next to Postfix: the same number of same-size messages, the same
# concurrency, local delivery, durable on both sides.
#
#   bench/postfix-compare.sh [-m MESSAGES] [-s SESSIONS] [-l BYTES] [-r REPEAT]
#                            [--smtp] [--cmtpd PATH] [--bench PATH]
#                            [--install] [--keep] [--json FILE]
#
# --smtp: cmtpd's inbound SMTP gateway instead of CMTP (PROTOCOL.md §19):
# the same smtp-source sends to cmtpd's [smtp] port, where every message is
# sealed to the recipient's key and durably stored before its 250; the
# clock stops when smtp-source has its last 250 (accepted = delivered).
#
# Postfix side: a THROWAWAY instance (its own config_directory,
# queue_directory and data_directory under a temporary directory, listening
# on a free port of 127.0.0.1 only, no DNS lookups, open to 127.0.0.1), which
# delivers with local(8) into the Maildir of a test user; smtp-source sends
# the messages; the clock stops when the last message is a file in the
# Maildir. The system's Postfix, if any, is not touched. cmtpd side:
# `cmtp-bench mail` with the same parameters (its own throwaway server).
# --cmtpd and --bench use given binaries instead of building them (to
# compare two trees in one sitting).
# Runs alternate (cmtp, postfix, cmtp, postfix, ...) and the medians are
# compared. Needs root (Postfix's master runs as root). Installs nothing
# unless given --install (then: apt-get install -y postfix, unconfigured).
set -euo pipefail

MESSAGES=20000
SESSIONS=20
SIZE=4096
REPEAT=3
INSTALL=0
KEEP=0
JSON=""
MODE=cmtp
CMTPD=""
BENCH=""
# Parallel local(8) deliveries to the one recipient (Postfix's default is 2;
# 20 matches the 20 sessions, and the bench sends to one user).
LOCAL_CONCURRENCY=20

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        -m|--messages) MESSAGES=$2; shift 2 ;;
        -s|--sessions) SESSIONS=$2; shift 2 ;;
        -l|--size) SIZE=$2; shift 2 ;;
        -r|--repeat) REPEAT=$2; shift 2 ;;
        --local-concurrency) LOCAL_CONCURRENCY=$2; shift 2 ;;
        --install) INSTALL=1; shift ;;
        --smtp) MODE=smtp; shift ;;
        --cmtpd) CMTPD=$2; shift 2 ;;
        --bench) BENCH=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --json) JSON=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMTP_SOURCE=/usr/sbin/smtp-source
BENCH_USER=cmtpbench

if [ "$(id -u)" != 0 ]; then
    echo "postfix-compare: run as root (Postfix's master must start as root)" >&2
    exit 2
fi
if ! command -v postfix >/dev/null || [ ! -x "$SMTP_SOURCE" ]; then
    if [ "$INSTALL" = 1 ]; then
        # "No configuration": the package installs without setting up or
        # starting a system Postfix.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        DEBIAN_FRONTEND=noninteractive apt-get install -y postfix
    else
        echo "postfix-compare: Postfix (and smtp-source) is not installed; rerun with --install" >&2
        exit 2
    fi
fi
for tool in python3 cargo; do
    command -v "$tool" >/dev/null || { echo "postfix-compare: needs $tool" >&2; exit 2; }
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$MODE" = smtp ]; then
    if [ -z "${CMTPD:-}" ]; then
        echo "== building cmtpd (release)"
        (cd "$ROOT" && cargo build --release -q -p cmtpd)
        CMTPD="$TARGET/release/cmtpd"
    fi
    echo "== cmtpd: $CMTPD"
else
    if [ -z "$BENCH" ]; then
        echo "== building cmtp-bench (release)"
        (cd "$ROOT" && cargo build --release -q -p cmtp-bench)
        BENCH="$TARGET/release/cmtp-bench"
    fi
    echo "== cmtp-bench: $BENCH"
fi

T=$(mktemp -d /tmp/postfix-compare.XXXXXX)
chmod 755 "$T"
PF="$T/postfix"
CREATED_USER=0
cleanup() {
    set +e
    if [ -f "$PF/etc/main.cf" ]; then
        postfix -c "$PF/etc" stop >/dev/null 2>&1
        # wait for master to exit
        for _ in $(seq 50); do
            [ -f "$PF/spool/pid/master.pid" ] && kill -0 "$(tr -d ' ' < "$PF/spool/pid/master.pid")" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [ -n "${CMTPD_PID:-}" ]; then kill "$CMTPD_PID" 2>/dev/null; wait "$CMTPD_PID" 2>/dev/null; fi
    if [ "$CREATED_USER" = 1 ]; then userdel "$BENCH_USER" 2>/dev/null; fi
    if [ "$KEEP" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

if ! id "$BENCH_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$BENCH_USER"
    CREATED_USER=1
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$PF/etc" "$PF/spool" "$PF/data" "$PF/maildirs"
chown postfix "$PF/data"
MAILDIR="$PF/maildirs/$BENCH_USER"

cat > "$PF/etc/main.cf" <<EOF
# Throwaway instance of bench/postfix-compare.sh
compatibility_level = 3.6
config_directory = $PF/etc
queue_directory = $PF/spool
data_directory = $PF/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
myorigin = bench.localdomain
mydestination = localhost, bench.localdomain
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
# no DNS anywhere
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
# local(8) into a Maildir (a spool name ending in "/"), no aliases, no biff
alias_maps =
alias_database =
mail_spool_directory = $PF/maildirs/
home_mailbox =
mailbox_command =
biff = no
local_destination_concurrency_limit = $LOCAL_CONCURRENCY
maillog_file_prefixes = $T
maillog_file = $PF/maillog
EOF

cat > "$PF/etc/master.cf" <<EOF
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
smtp      unix  - - n - - smtp
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF

count_maildir() {
    find "$MAILDIR/new" "$MAILDIR/cur" -type f 2>/dev/null | wc -l
}

echo "== starting the throwaway Postfix on 127.0.0.1:$PORT ($PF)"
if ! postfix -c "$PF/etc" check || ! postfix -c "$PF/etc" start; then
    echo "postfix-compare: the throwaway Postfix did not start; its log:" >&2
    cat "$PF/maillog" >&2 2>/dev/null || true
    exit 1
fi
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null && break
    sleep 0.1
done

# One run of Postfix: empty the Maildir, send, wait for every message.
postfix_run() {
    local out=$1
    rm -rf "$MAILDIR"
    mkdir -p "$MAILDIR"/{new,cur,tmp}
    chown -R "$BENCH_USER" "$MAILDIR"
    local start end_sent end_all n last_n stall
    start=$(date +%s.%N)
    "$SMTP_SOURCE" -d -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -f "sender@bench.localdomain" -t "$BENCH_USER@bench.localdomain" "127.0.0.1:$PORT"
    end_sent=$(date +%s.%N)
    last_n=-1; stall=0
    while :; do
        n=$(count_maildir)
        [ "$n" -ge "$MESSAGES" ] && break
        if [ "$n" = "$last_n" ]; then
            stall=$((stall + 1))
            if [ "$stall" -ge 600 ]; then echo "postfix stalled at $n of $MESSAGES" >&2; break; fi
        else
            stall=0; last_n=$n
        fi
        sleep 0.1
    done
    end_all=$(date +%s.%N)
    python3 - "$start" "$end_sent" "$end_all" "$n" > "$out" <<'PY'
import json, sys
start, sent, done, n = map(float, sys.argv[1:5])
print(json.dumps({"delivered": n, "accept_elapsed": sent - start,
                  "elapsed": done - start,
                  "accepted_per_s": n / (sent - start),
                  "delivered_per_s": n / (done - start)}))
PY
}

# cmtpd's SMTP gateway (--smtp): one server for all runs, one account.
if [ "$MODE" = smtp ]; then
    CD="$T/cmtpd"
    # shellcheck source=bench/cmtpd-smtp-setup.sh
    . "$ROOT/bench/cmtpd-smtp-setup.sh"
    cmtpd_smtp_setup "$CMTPD" "$CD" "$BENCH_USER"
    "$CMTPD" --data-dir "$CD" run > "$CD/cmtpd.log" 2>&1 &
    CMTPD_PID=$!
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$SPORT),1)" 2>/dev/null && break
        sleep 0.1
    done
fi

cmtpd_count() {
    "$CMTPD" --data-dir "$CD" -o json user list | python3 -c "import json,sys; d=json.load(sys.stdin); d=d.get('users', d) if isinstance(d, dict) else d; print(sum(u.get('messages',0) for u in d))"
}

# One run of cmtpd's SMTP gateway, measured like Postfix's.
cmtpd_smtp_run() {
    local out=$1 before after start end
    before=$(cmtpd_count)
    start=$(date +%s.%N)
    "$SMTP_SOURCE" -d -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -f "sender@bench.localdomain" -t "$BENCH_USER@cmtp.localdomain" "127.0.0.1:$SPORT"
    end=$(date +%s.%N)
    after=$(cmtpd_count)
    python3 - "$start" "$end" "$before" "$after" > "$out" <<'PY'
import json, sys
start, end, before, after = map(float, sys.argv[1:5])
n = after - before
print(json.dumps({"median": {"delivered": n, "elapsed": end - start,
                             "msgs_per_s": n / (end - start), "latency_p99": 0}}))
PY
}

# warm-up: a few messages, so that every Postfix daemon has started
"$SMTP_SOURCE" -d -s 2 -m 20 -l "$SIZE" -f "sender@bench.localdomain" \
    -t "$BENCH_USER@bench.localdomain" "127.0.0.1:$PORT"
sleep 2

for i in $(seq "$REPEAT"); do
    if [ "$MODE" = smtp ]; then
        echo "== run $i of $REPEAT: cmtpd SMTP gateway (smtp-source -d -s $SESSIONS -m $MESSAGES -l $SIZE)"
        cmtpd_smtp_run "$T/cmtp-$i.json"
    else
        echo "== run $i of $REPEAT: cmtp-bench mail -c $SESSIONS -m $MESSAGES -s $SIZE"
        "$BENCH" mail -c "$SESSIONS" -m "$MESSAGES" -s "$SIZE" --json "$T/cmtp-$i.json" >/dev/null
    fi
    echo "== run $i of $REPEAT: postfix (smtp-source -d -s $SESSIONS -m $MESSAGES -l $SIZE)"
    postfix_run "$T/postfix-$i.json"
done

python3 - "$T" "$REPEAT" "$MESSAGES" "$SESSIONS" "$SIZE" "$LOCAL_CONCURRENCY" "${JSON:-}" "$MODE" <<'PY'
import json, statistics, sys
t, repeat, messages, sessions, size, conc, out, mode = sys.argv[1:9]
repeat = int(repeat)
cm = [json.load(open(f"{t}/cmtp-{i}.json"))["median"] for i in range(1, repeat + 1)]
pf = [json.load(open(f"{t}/postfix-{i}.json")) for i in range(1, repeat + 1)]
def col(rows, key): return [r[key] for r in rows]
def med(xs): return statistics.median(xs)
def spread(xs):
    m = med(xs)
    return f"±{(max(xs) - min(xs)) / 2 / m * 100:.0f}%" if m else "-"
c_rate = col(cm, "msgs_per_s")
c_p99 = col(cm, "latency_p99")
p_acc = col(pf, "accepted_per_s")
p_del = col(pf, "delivered_per_s")
ratios = [c / p for c, p in zip(c_rate, p_del)]
print()
print(f"{messages} messages of {size} bytes, {sessions} connections, local delivery, durable; {repeat} runs each, alternating")
print(f"{'':34} {'median':>10} {'spread':>8}   runs")
def row(name, xs, fmt="{:.0f}"):
    print(f"{name:34} {fmt.format(med(xs)):>10} {spread(xs):>8}   " + " ".join(fmt.format(x) for x in xs))
if mode == "smtp":
    row("cmtpd SMTP msg/s (sealed, 250)", c_rate)
else:
    row("cmtpd delivered msg/s (SUCCESS)", c_rate)
    row("cmtpd MAIL latency p99 ms", c_p99, "{:.2f}")
row("postfix accepted msg/s (250 OK)", p_acc)
row("postfix delivered msg/s (Maildir)", p_del)
row("ratio cmtpd / postfix delivered", ratios, "{:.2f}")
print(f"(postfix: local_destination_concurrency_limit = {conc}; smtp-source -d keeps each session open)")
if out:
    json.dump({"mode": mode, "messages": int(messages), "sessions": int(sessions), "size": int(size),
               "local_destination_concurrency_limit": int(conc),
               "cmtp": cm, "postfix": pf,
               "median": {"cmtp_msgs_per_s": med(c_rate), "cmtp_latency_p99_ms": med(c_p99),
                          "postfix_accepted_per_s": med(p_acc),
                          "postfix_delivered_per_s": med(p_del), "ratio": med(ratios)}},
              open(out, "w"), indent=2)
PY
