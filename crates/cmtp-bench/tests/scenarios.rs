//! Every scenario of cmtp-bench at a tiny size, against its own server: the
//! tool works from a clean checkout. No timing is asserted, only counts.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cmtp-bench");

/// Runs `cmtp-bench ARGS --json F` and returns the median metrics.
fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(BIN)
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--server-log")
        .arg("warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cmtp-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("metric"), "no table printed:\n{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["machine"]["nproc"].as_u64().unwrap() >= 1);
    // The throwaway data directories are gone.
    assert!(
        only(dir.path(), "out.json"),
        "data left in {}",
        dir.path().display()
    );
    v["median"].clone()
}

fn only(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .all(|n| n == name)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn mail_on_postgresql_delivers_every_message_durably() {
    // The same scenario on the PostgreSQL backend (a throwaway cluster).
    if let Err(why) = cmtp_testkit::postgres::PgCluster::availability() {
        assert!(
            std::env::var(cmtp_testkit::postgres::REQUIRE_ENV).as_deref() != Ok("1"),
            "PostgreSQL is required here: {why}"
        );
        eprintln!("PostgreSQL suite did not run: {why}");
        return;
    }
    let m = bench(&[
        "mail", "--store", "postgres", "-m", "50", "-c", "4", "-s", "512",
    ]);
    assert_eq!(num(&m, "accepted"), 50.0, "{m}");
    assert_eq!(num(&m, "delivered"), 50.0, "{m}");
}

#[test]
fn mail_delivers_every_message_durably() {
    let m = bench(&["mail", "-m", "50", "-c", "4", "-s", "512"]);
    assert_eq!(num(&m, "accepted"), 50.0, "{m}");
    assert_eq!(num(&m, "errors"), 0.0, "{m}");
    assert_eq!(num(&m, "delivered"), 50.0, "{m}");
    assert!(num(&m, "msgs_per_s") > 0.0);
    assert!(num(&m, "latency_p99") >= num(&m, "latency_p50"));
    assert!(num(&m, "server_rss") > 0.0);
}

#[test]
fn mail_with_every_signature_checked() {
    let m = bench(&["mail", "-m", "10", "-c", "2", "--verify"]);
    assert_eq!(num(&m, "accepted"), 10.0, "{m}");
    assert_eq!(num(&m, "errors"), 0.0, "{m}");
}

#[test]
fn keyrequest_single_and_pipelined() {
    let m = bench(&["keyrequest", "-n", "200", "-c", "4", "-u", "3"]);
    assert_eq!(num(&m, "single_answers"), 200.0, "{m}");
    assert_eq!(num(&m, "pipelined_answers"), 200.0, "{m}");
    assert_eq!(num(&m, "single_errors") + num(&m, "pipelined_errors"), 0.0);
}

#[test]
fn keyrequest_with_proofs_waits_for_the_epoch_and_reports_the_proof_size() {
    let m = bench(&["keyrequest", "--proof", "-n", "100", "-c", "2", "-u", "3"]);
    assert_eq!(num(&m, "single_answers"), 100.0, "{m}");
    assert_eq!(num(&m, "pipelined_answers"), 100.0, "{m}");
    assert_eq!(num(&m, "single_errors") + num(&m, "pipelined_errors"), 0.0);
    // The answer holds the statement, the signed head and the lookup proof.
    assert!(num(&m, "lookup_proof_bytes") > 500.0, "{m}");
    assert!(
        num(&m, "answer_bytes") > num(&m, "lookup_proof_bytes") + 200.0,
        "{m}"
    );
}

#[test]
fn handshake_negotiates_the_hybrid_group_and_the_classical_one_when_asked() {
    let m = bench(&["handshake", "-n", "12", "-c", "3"]);
    for group in ["hybrid", "classical"] {
        assert_eq!(num(&m, &format!("{group}_handshakes")), 12.0, "{m}");
        assert_eq!(num(&m, &format!("{group}_errors")), 0.0, "{m}");
        // Every handshake negotiated the group its client offered first.
        assert_eq!(num(&m, &format!("{group}_wrong_group")), 0.0, "{m}");
        assert!(num(&m, &format!("{group}_server_cpu_per_hs")) >= 0.0);
    }
    // The ML-KEM-768 key share and ciphertext travel in the hybrid
    // handshake only: 1,184 + 1,088 bytes more.
    assert!(
        num(&m, "hybrid_bytes_per_hs") > num(&m, "classical_bytes_per_hs") + 2000.0,
        "{m}"
    );
}

#[test]
fn abuse_leaves_the_legitimate_user_served_and_the_budgets_on() {
    let m = bench(&[
        "abuse",
        "--secs",
        "4",
        "--addrs",
        "4",
        "--drip-per-addr",
        "3",
        "--drip-byte-secs",
        "0.2",
        "--uploaders",
        "2",
        "--upload-mib",
        "2",
        "--login-spammers",
        "1",
        "--legit-delay",
        "0.5",
        "--legit-messages",
        "2",
        "--legit-pause-ms",
        "100",
    ]);
    assert_eq!(num(&m, "legit_errors"), 0.0, "{m}");
    assert!(num(&m, "legit_logins") >= 1.0, "{m}");
    assert!(num(&m, "legit_mails") >= 2.0, "{m}");
    // Every kind of attack ran.
    assert_eq!(num(&m, "drip_peak_open"), 12.0, "{m}");
    assert!(num(&m, "upload_started") >= 1.0, "{m}");
    assert!(num(&m, "login_spam_sent") >= 1.0, "{m}");
    // The server ran with its default staging budgets (twice and four
    // times the 64 MiB message limit), not switched off for the bench.
    assert_eq!(num(&m, "staging_budget_per_peer"), 128.0, "{m}");
    assert_eq!(num(&m, "staging_budget_per_domain"), 256.0, "{m}");
    assert!(num(&m, "server_hwm") > 0.0, "{m}");
}

#[test]
fn idle_connections_stay_open_and_noop_answers() {
    let m = bench(&["idle", "-n", "20", "--hold", "0.1", "--noops", "5"]);
    assert_eq!(num(&m, "connections"), 20.0, "{m}");
    assert_eq!(num(&m, "failed"), 0.0, "{m}");
    assert_eq!(num(&m, "idle_sampled_alive"), 5.0, "{m}");
    assert!(num(&m, "server_rss") > 0.0);
}

#[test]
fn idle_from_several_source_addresses() {
    let m = bench(&["idle", "-n", "12", "--source-addrs", "3", "--hold", "0"]);
    assert_eq!(num(&m, "connections"), 12.0, "{m}");
}

#[test]
fn bigmail_streams_large_messages() {
    let m = bench(&["bigmail", "-k", "3", "-s", "1"]);
    assert_eq!(num(&m, "accepted"), 3.0, "{m}");
    assert_eq!(num(&m, "errors"), 0.0, "{m}");
    assert!(num(&m, "server_hwm") > 0.0);
}

#[test]
fn relay_reaches_the_other_domain() {
    let m = bench(&["relay", "-m", "20", "-c", "4", "--poll-ms", "50"]);
    assert_eq!(num(&m, "submit_accepted"), 20.0, "{m}");
    assert_eq!(num(&m, "delivered"), 20.0, "{m}");
}

#[test]
fn client_syncs_everything_then_only_the_new_messages() {
    let v = bench(&["client", "-m", "300", "-n", "5", "-s", "100"]);
    assert!(num(&v, "initial_sync_rate") > 0.0);
    // 300 messages of ~450 bytes, then 5 of them: the second costs a
    // sixtieth or so of the first, plus the login.
    let first = num(&v, "initial_sync_bytes");
    let second = num(&v, "inbox_new_bytes");
    assert!(first > 300.0 * 400.0, "{v}");
    assert!(second < first / 20.0, "{v}");
    assert!(num(&v, "inbox_nothing_new_bytes") < second, "{v}");
}

#[test]
fn search_finds_the_planted_words_in_a_filled_local_store() {
    let v = bench(&["search", "-m", "3000", "-r", "3"]);
    assert_eq!(num(&v, "rare_word_results"), 10.0, "{v}");
    assert!(num(&v, "common_word_results") > 0.0, "{v}");
    assert!(num(&v, "rare_word_p50") > 0.0, "{v}");
    assert!(num(&v, "fill_rate") > 0.0, "{v}");
}

#[test]
fn crypto_rates() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("c.json");
    let out = Command::new(BIN)
        .args(["crypto", "--secs", "0.02", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "ed25519_sign_per_s",
        "ed25519_verify_per_s",
        "seal_4k_mib_per_s",
        "sha256_mib_per_s",
    ] {
        assert!(num(&v["median"], key) > 0.0, "{key}: {v}");
    }
}

#[test]
fn repeat_gives_a_median_of_several_runs() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = Command::new(BIN)
        .args(["crypto", "--secs", "0.01", "--repeat", "3", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("median") && stdout.contains("run 3"),
        "{stdout}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
}
