//! `search`: full-text search over the mail program's local store (issue
//! 14). A local store of M messages (default 100,000) is filled through the
//! same calls the sync makes (`upsert_summary`, `store_fetched`, in
//! transactions of 1,000), with text drawn from a fixed vocabulary by a
//! seeded generator: 300 senders with display names, five To/Cc
//! recipients at most, subjects of 3–8 words, texts of 30–150 words,
//! dates over three years, every tenth message with an attachment. A few
//! rare words are planted in known messages. Then each kind of query runs
//! R times (p50, p99): a rare word, a common word, a sender filter with a
//! word, a subject filter, a date range, an attachment name, a word with a
//! date range, a prefix. When the `cmtp` binary is next to this one, the
//! common query is timed as a real `cmtp search` process too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use cmtp_app::home::{Config, Home};
use cmtp_app::search::Query;
use cmtp_app::store::{LocalStore, Opened};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::payload::mailbox::{Folder, Summary};
use serde_json::json;

use crate::report::Run;
use crate::server::ServerOpts;

/// Parameters of `search`.
#[derive(Args, Debug, Clone)]
pub(crate) struct SearchArgs {
    /// Messages in the local store.
    #[arg(short = 'm', long, default_value_t = 100_000)]
    pub(crate) messages: u64,
    /// Times each query runs.
    #[arg(short = 'r', long, default_value_t = 20)]
    pub(crate) queries: usize,
    /// The `cmtp` binary to time as a process (default: next to this one).
    #[arg(long, value_name = "FILE")]
    pub(crate) cmtp: Option<PathBuf>,
}

impl SearchArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({ "messages": self.messages, "queries": self.queries })
    }
}

/// xorshift64*: deterministic, fast, good enough to pick words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const COMMON: &[&str] = &[
    "meeting", "project", "report", "please", "thanks", "review", "budget", "team", "update",
    "schedule", "tomorrow", "friday", "draft", "attached", "question", "client", "contract",
    "invoice", "design", "release", "plan", "weekly", "notes", "call", "deadline", "office",
    "travel", "lunch", "approve", "numbers", "quarter", "feedback", "agenda", "minutes",
];

/// A vocabulary: the common words and 4,000 made-up ones (so that most
/// words are rare, as in real mail).
fn vocabulary() -> Vec<String> {
    let syllables = [
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "da", "go", "zu", "fe", "bi", "xo",
        "ly",
    ];
    let mut v: Vec<String> = COMMON.iter().map(|s| (*s).to_owned()).collect();
    for i in 0..4000usize {
        let w = format!(
            "{}{}{}",
            syllables[i % 16],
            syllables[(i / 16) % 16],
            syllables[(i / 256) % 16]
        );
        v.push(w);
    }
    v
}

/// Planted words: (word, how many messages carry it).
const RARE: &[(&str, u64)] = &[("quetzal", 10), ("zeppelin", 3)];

fn words(rng: &mut Rng, vocab: &[String], n: u64) -> String {
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        // Common words a third of the time.
        let w = if rng.below(3) == 0 {
            &vocab[rng.below(COMMON.len() as u64) as usize]
        } else {
            &vocab[rng.below(vocab.len() as u64) as usize]
        };
        out.push_str(w);
    }
    out
}

const DAY: u64 = 86_400;
/// 2024-01-01T00:00:00Z.
const START: u64 = 1_704_067_200;

/// Fills `store` with `n` messages; returns the ids that got each rare word.
fn fill(store: &mut LocalStore, n: u64) -> anyhow::Result<Vec<(String, Vec<u64>)>> {
    let vocab = vocabulary();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let people: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                format!("person{i}@d{}.example", i % 17),
                format!("Person {} {}", vocab[34 + i * 7].to_uppercase(), i),
            )
        })
        .collect();
    let mut planted: Vec<(String, Vec<u64>)> = RARE
        .iter()
        .map(|(w, _)| ((*w).to_owned(), Vec::new()))
        .collect();
    let mut uid = 0u64;
    while uid < n {
        let batch = (n - uid).min(1000);
        store.transaction(|s| {
            for _ in 0..batch {
                uid += 1;
                let from = &people[rng.below(people.len() as u64) as usize];
                let date = START + rng.below(3 * 365 * DAY);
                let summary = Summary {
                    uid,
                    modseq: uid,
                    flags: if rng.below(4) == 0 { 0 } else { 1 },
                    folder: Folder::inbox(),
                    size: 1000,
                    received_at: date,
                    hash: {
                        let mut h = [0u8; 32];
                        h[..8].copy_from_slice(&uid.to_be_bytes());
                        h
                    },
                    version: 1,
                    attachment_count: 0,
                    source_account: Some(
                        Account::parse(from.0.split('@').next().unwrap_or("x")).expect("valid"),
                    ),
                    source_domain: Domain::parse(from.0.split('@').nth(1).unwrap_or("x"))
                        .expect("valid"),
                };
                s.upsert_summary(&summary)?;
                let len = 30 + rng.below(120);
                let mut text = words(&mut rng, &vocab, len);
                for (k, (w, count)) in RARE.iter().enumerate() {
                    // Spread the planted words over the whole store.
                    if planted[k].1.len() < *count as usize && uid % (n / count).max(1) == 7 {
                        text.push(' ');
                        text.push_str(w);
                        planted[k].1.push(uid);
                    }
                }
                let to: Vec<String> = (0..1 + rng.below(3))
                    .map(|_| {
                        let p = &people[rng.below(people.len() as u64) as usize];
                        format!("{} <{}>", p.1, p.0)
                    })
                    .collect();
                let attachments = if uid.is_multiple_of(10) {
                    vec![(format!("invoice-{uid}.pdf"), vec![0u8; 16])]
                } else {
                    Vec::new()
                };
                let subject_len = 3 + rng.below(6);
                let subject = words(&mut rng, &vocab, subject_len);
                let opened = Opened {
                    destination: Some("bench@d0.example".into()),
                    verdict: "verified".into(),
                    subject: Some(subject),
                    date: Some(cmtp_client::clock::rfc3339(date)),
                    date_ts: Some(date),
                    body: Some(text),
                    content_version: Some(2),
                    from_name: Some(from.1.clone()),
                    message_id: Some(format!("{uid:016x}@d0.example")),
                    to,
                    attachments,
                    ..Opened::default()
                };
                s.store_fetched(uid, b"", &opened)?;
            }
            Ok(())
        })?;
    }
    Ok(planted)
}

fn time_query(
    store: &LocalStore,
    q: &str,
    times: usize,
    run: &mut Run,
    name: &str,
) -> anyhow::Result<usize> {
    let query = Query::parse(q)?;
    let mut samples: Vec<Duration> = Vec::with_capacity(times);
    let mut found = 0;
    for _ in 0..times.max(1) {
        let t = Instant::now();
        found = store.search(&query, 50)?.len();
        samples.push(t.elapsed());
    }
    run.add_latency(name, &mut samples);
    run.add(&format!("{name}_results"), found as f64, "");
    Ok(found)
}

fn cmtp_binary(args: &SearchArgs) -> Option<PathBuf> {
    if let Some(p) = &args.cmtp {
        return Some(p.clone());
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("cmtp");
    p.is_file().then_some(p)
}

pub(crate) async fn run(opts: &ServerOpts, args: &SearchArgs) -> anyhow::Result<Run> {
    tokio::task::block_in_place(|| run_blocking(opts, args))
}

fn run_blocking(opts: &ServerOpts, args: &SearchArgs) -> anyhow::Result<Run> {
    let mut run = Run::default();
    let base = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("cmtp-bench-search-")
        .tempdir_in(base)?;
    let home = Home::at(dir.path());
    let me = Address::parse("bench@d0.example")?;
    home.save_identity(&IdentityKey::from_seed(&[9; 32]), &me)?;
    home.save_config(&Config {
        address: Some(me.to_string()),
        ..Config::default()
    })?;
    let mut store = LocalStore::open(&home.store_path(), &me.to_string())?;
    let t = Instant::now();
    let planted = fill(&mut store, args.messages)?;
    let secs = t.elapsed().as_secs_f64();
    run.add("fill_rate", args.messages as f64 / secs, "msg/s");
    run.add(
        "local_store_size",
        std::fs::metadata(home.store_path())?.len() as f64 / f64::from(1 << 20),
        "MiB",
    );
    // The same queries a person types.
    let r = args.queries;
    let rare = time_query(&store, "quetzal", r, &mut run, "rare_word")?;
    if rare != planted[0].1.len() {
        bail!(
            "the rare word was found {rare} times, planted {}",
            planted[0].1.len()
        );
    }
    time_query(&store, "meeting", r, &mut run, "common_word")?;
    time_query(&store, "from:person42 budget", r, &mut run, "from_and_word")?;
    time_query(&store, "subject:review", r, &mut run, "subject")?;
    time_query(
        &store,
        "after:2025-03-01 before:2025-04-01",
        r,
        &mut run,
        "date_range",
    )?;
    let inv = time_query(&store, "invoice-5000.pdf", r, &mut run, "attachment_name")?;
    if args.messages >= 5000 && inv != 1 {
        bail!("the attachment name was found {inv} times, not once");
    }
    time_query(
        &store,
        "meeting after:2025-01-01 before:2025-07-01",
        r,
        &mut run,
        "word_and_dates",
    )?;
    time_query(&store, "proj*", r, &mut run, "prefix")?;
    drop(store);

    if let Some(bin) = cmtp_binary(args) {
        let mut samples = Vec::new();
        for _ in 0..r.clamp(1, 10) {
            let t = Instant::now();
            let out = std::process::Command::new(&bin)
                .arg("--home")
                .arg(dir.path())
                .args(["search", "meeting", "from:person42"])
                .env_remove("CMTP_HOME")
                .env_remove("CMTP_SERVER")
                .stdin(std::process::Stdio::null())
                .output()
                .with_context(|| format!("running {}", bin.display()))?;
            samples.push(t.elapsed());
            if !out.status.success() {
                bail!(
                    "cmtp search failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        run.add_latency("cmtp_search_process", &mut samples);
    } else {
        run.notes.push(
            "no cmtp binary next to cmtp-bench: the process timing was skipped (cargo build --release -p cmtp)".into(),
        );
    }
    Ok(run)
}
