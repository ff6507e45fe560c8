# Sourced by postfix-compare.sh --smtp and smtp-callgrind.sh: the throwaway
# cmtpd both benchmark, so that they measure the same configuration.
#
#   cmtpd_smtp_setup CMTPD DATA_DIR USER
#
# Makes DATA_DIR a cmtpd for cmtp.localdomain with the account USER
# (password "bench password") and sets CPORT and SPORT, free loopback
# ports for its CMTP and SMTP listeners. Defaults but: loopback ports; no
# per-peer message rate (all sessions come from 127.0.0.1); SPF/DKIM/DMARC
# off, as Postfix checks none either here (and this machine has no DNS).
# The caller starts it: "$CMTPD" --data-dir DATA_DIR run.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cmtpd_smtp_setup() {
    local cmtpd=$1 dir=$2 user=$3
    mkdir -p "$dir"
    CPORT=$(free_port)
    SPORT=$(free_port)
    cat > "$dir/cmtpd.toml" <<TOML
domain = "cmtp.localdomain"
listen = ["127.0.0.1:$CPORT"]

[smtp]
listen = ["127.0.0.1:$SPORT"]
messages_per_minute = 100000000
message_burst = 100000000
verify = false
TOML
    printf 'bench password\n' > "$dir/.bench-password"
    "$cmtpd" --data-dir "$dir" init --domain cmtp.localdomain >/dev/null 2>&1
    "$cmtpd" --data-dir "$dir" user add "$user" --password-file "$dir/.bench-password" >/dev/null
}
