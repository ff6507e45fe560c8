//! Search over the local store's decrypted copies: SQLite FTS5 (the
//! `messages_fts` index of [`crate::store`]) over the sender, the
//! recipients, the subject, the text and the attachment names.
//!
//! A query is words and filters, all of which must match:
//!
//! ```text
//! report                 a word anywhere (sender, recipients, subject, text,
//!                        attachment names); words match whole tokens,
//!                        `repo*` any token starting with "repo"
//! "quarterly report"     a phrase
//! from:alice             the sender (address or display name)
//! to:bob@b.example       a recipient (To, Cc, Bcc as this copy has them)
//! subject:invoice        the subject
//! after:2026-11-01       on or after that day (UTC; the message's date)
//! before:2026-12-01      before that day
//! date:2026-11-26        on that day
//! folder:Archive         in that folder (`in:` too)
//! ```
//!
//! Every word goes to FTS5 as a quoted string, so nothing a person types is
//! read as FTS5 syntax. Results come newest first.

use rusqlite::params_from_iter;
use rusqlite::types::Value;

use crate::failure::{Error, Result};
use crate::store::{LocalStore, MESSAGE_COLUMNS, StoredMessage, i, message_row};

/// A parsed search query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Terms for any column: (text, prefix).
    pub words: Vec<(String, bool)>,
    /// `from:` terms.
    pub from: Vec<(String, bool)>,
    /// `to:` terms.
    pub to: Vec<(String, bool)>,
    /// `subject:` terms.
    pub subject: Vec<(String, bool)>,
    /// On or after (unix seconds).
    pub after: Option<u64>,
    /// Before (unix seconds).
    pub before: Option<u64>,
    /// Only this folder.
    pub folder: Option<String>,
}

/// Splits at white space outside double quotes; quotes are removed.
fn tokens(q: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in q.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err(Error::Invalid("the search has an unclosed '\"'".into()));
    }
    if any {
        out.push(cur);
    }
    Ok(out)
}

/// `YYYY-MM-DD` as unix seconds at 00:00 UTC.
pub fn parse_day(s: &str) -> Result<u64> {
    let bad = || Error::Invalid(format!("{s:?} is not a date: write YYYY-MM-DD"));
    let ok = s.len() == 10
        && s.bytes().enumerate().all(|(n, b)| {
            if n == 4 || n == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !ok {
        return Err(bad());
    }
    cmtp_client::clock::parse_rfc3339(&format!("{s}T00:00:00Z")).ok_or_else(bad)
}

const DAY: u64 = 86_400;

/// Above this many full-text matches, the newest matching messages are
/// found by walking the fetched messages newest first (the `messages_date`
/// index) and keeping those that match, which stops after the page is
/// full; at or below it, by looking every match up and sorting. A common
/// word matches most of a large store: on 100,000 messages, looking up
/// 60,000 matches to keep 50 took about 85 ms, the walk about 15 ms; for a
/// rare word it is the other way round (0.1 ms against 25 ms).
pub const FEW_MATCHES: u64 = 1_000;

fn term(raw: &str) -> Option<(String, bool)> {
    let (text, prefix) = match raw.strip_suffix('*') {
        Some(t) => (t, true),
        None => (raw, false),
    };
    let text = text.trim();
    (!text.is_empty()).then(|| (text.to_owned(), prefix))
}

impl Query {
    /// Parses what a person typed.
    pub fn parse(q: &str) -> Result<Query> {
        let mut out = Query::default();
        for t in tokens(q)? {
            let (key, value) = match t.split_once(':') {
                Some((k, v))
                    if matches!(
                        k.to_ascii_lowercase().as_str(),
                        "from"
                            | "to"
                            | "subject"
                            | "after"
                            | "since"
                            | "before"
                            | "date"
                            | "folder"
                            | "in"
                    ) =>
                {
                    (k.to_ascii_lowercase(), v.to_owned())
                }
                _ => {
                    out.words.extend(term(&t));
                    continue;
                }
            };
            match key.as_str() {
                "from" => out.from.extend(term(&value)),
                "to" => out.to.extend(term(&value)),
                "subject" => out.subject.extend(term(&value)),
                "after" | "since" => {
                    let d = parse_day(&value)?;
                    out.after = Some(out.after.map_or(d, |a| a.max(d)));
                }
                "before" => {
                    let d = parse_day(&value)?;
                    out.before = Some(out.before.map_or(d, |b| b.min(d)));
                }
                "date" => {
                    let d = parse_day(&value)?;
                    out.after = Some(out.after.map_or(d, |a| a.max(d)));
                    out.before = Some(out.before.map_or(d + DAY, |b| b.min(d + DAY)));
                }
                _ => out.folder = Some(value),
            }
        }
        Ok(out)
    }

    /// Whether nothing at all is asked.
    pub fn is_empty(&self) -> bool {
        *self == Query::default()
    }

    /// The FTS5 MATCH expression, or `None` when only filters are given.
    pub fn fts(&self) -> Option<String> {
        fn quote((text, prefix): &(String, bool)) -> String {
            format!(
                "\"{}\"{}",
                text.replace('"', "\"\""),
                if *prefix { "*" } else { "" }
            )
        }
        let mut parts: Vec<String> = self.words.iter().map(quote).collect();
        for (column, list) in [
            ("search_from", &self.from),
            ("search_to", &self.to),
            ("subject", &self.subject),
        ] {
            parts.extend(list.iter().map(|t| format!("{column} : {}", quote(t))));
        }
        (!parts.is_empty()).then(|| parts.join(" AND "))
    }
}

impl LocalStore {
    /// The messages that match `query`, newest first, at most `limit`
    /// (0: all).
    pub fn search(&self, query: &Query, limit: u64) -> Result<Vec<StoredMessage>> {
        let (sql, args) = self.search_sql(query, limit)?;
        let mut st = self.db(self.conn().prepare(&sql))?;
        let rows = self.db(st.query_map(params_from_iter(args), message_row))?;
        self.db(rows.collect())
    }

    /// How many messages match the FTS5 expression `m`, counted up to
    /// `max` (reading the index only).
    fn fts_matches(&self, m: &str, max: u64) -> Result<u64> {
        let n: i64 = self.db(self.conn().query_row(
            "SELECT count(*) FROM (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?1 LIMIT ?2)",
            rusqlite::params![m, i(max)],
            |r| r.get(0),
        ))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The statement [`search`](Self::search) runs, and its arguments.
    fn search_sql(&self, query: &Query, limit: u64) -> Result<(String, Vec<Value>)> {
        let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE fetched = 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(m) = query.fts() {
            // With many matches and a page to fill, `+uid` keeps SQLite
            // from driving the query by the matches' rowids, so that it
            // walks `messages_date` newest first (see FEW_MATCHES).
            let walk = limit != 0 && self.fts_matches(&m, FEW_MATCHES + 1)? > FEW_MATCHES;
            args.push(Value::Text(m));
            sql.push_str(&format!(
                " AND {} IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?{})",
                if walk { "+uid" } else { "uid" },
                args.len()
            ));
        }
        if let Some(a) = query.after {
            args.push(Value::Integer(i(a)));
            sql.push_str(&format!(" AND date_ts >= ?{}", args.len()));
        }
        if let Some(b) = query.before {
            args.push(Value::Integer(i(b)));
            sql.push_str(&format!(" AND date_ts < ?{}", args.len()));
        }
        if let Some(f) = &query.folder {
            args.push(Value::Text(f.clone()));
            sql.push_str(&format!(" AND folder = ?{}", args.len()));
        }
        args.push(Value::Integer(if limit == 0 { i64::MAX } else { i(limit) }));
        sql.push_str(&format!(
            " ORDER BY date_ts DESC, uid DESC LIMIT ?{}",
            args.len()
        ));
        Ok((sql, args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_read_as_people_write_them() {
        let q = Query::parse(
            "report from:alice \"quarterly plan\" to:bob@b.test subject:Q3 repo* after:2026-11-01 before:2026-12-01 in:Archive",
        )
        .unwrap();
        assert_eq!(
            q.words,
            [
                ("report".into(), false),
                ("quarterly plan".into(), false),
                ("repo".into(), true)
            ]
        );
        assert_eq!(q.from, [("alice".into(), false)]);
        assert_eq!(q.to, [("bob@b.test".into(), false)]);
        assert_eq!(q.subject, [("Q3".into(), false)]);
        assert_eq!(q.after, Some(1_793_491_200));
        assert_eq!(q.before, Some(1_796_083_200));
        assert_eq!(q.folder.as_deref(), Some("Archive"));
        assert_eq!(
            q.fts().unwrap(),
            "\"report\" AND \"quarterly plan\" AND \"repo\"* AND search_from : \"alice\" AND search_to : \"bob@b.test\" AND subject : \"Q3\""
        );
        let d = Query::parse("date:2026-11-26").unwrap();
        assert_eq!(d.before.unwrap() - d.after.unwrap(), DAY);
        assert_eq!(d.fts(), None);
        // FTS5 syntax is never taken from the query.
        let q = Query::parse("NEAR(a b) OR x\"\"y").unwrap();
        assert!(q.fts().unwrap().starts_with("\"NEAR(a\""));
        assert!(Query::parse("after:yesterday").is_err());
        assert!(Query::parse("\"open").is_err());
        // An unknown key is a word.
        assert_eq!(Query::parse("http://x").unwrap().words.len(), 1);
    }

    /// A store of `n` fetched messages whose dates are not in the order of
    /// their ids; every one says "common", every 97th also "rare".
    fn store_of(n: u64) -> (tempfile::TempDir, LocalStore) {
        use crate::store::Opened;
        use cmtp_proto::names::{Account, Domain};
        use cmtp_proto::payload::mailbox::{Folder, Summary};
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            LocalStore::open(&dir.path().join(crate::store::STORE_FILE), "bob@b.test").unwrap();
        s.transaction(|s| {
            for uid in 1..=n {
                s.upsert_summary(&Summary {
                    uid,
                    modseq: uid,
                    flags: 0,
                    folder: Folder::inbox(),
                    size: 10,
                    received_at: uid,
                    hash: [(uid % 251) as u8; 32],
                    version: 1,
                    attachment_count: 0,
                    source_account: Some(Account::parse("alice").unwrap()),
                    source_domain: Domain::parse("a.test").unwrap(),
                })?;
                let body = if uid.is_multiple_of(97) {
                    "common and rare"
                } else {
                    "common"
                };
                s.store_fetched(
                    uid,
                    b"",
                    &Opened {
                        verdict: "verified".into(),
                        subject: Some(format!("message {uid}")),
                        body: Some(body.into()),
                        content_version: Some(2),
                        // A permutation of the ids, a few on one day.
                        date_ts: Some(1_699_920_000 + (uid * 7919 % n) / 3 * DAY),
                        ..Opened::default()
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
        (dir, s)
    }

    /// What a search must return: every message that `keep` accepts,
    /// newest first by date, then by id, at most `limit`.
    fn expected(s: &LocalStore, keep: impl Fn(u64) -> bool, limit: usize) -> Vec<u64> {
        let mut all: Vec<(u64, u64)> = s
            .list("Inbox", 0, 0)
            .unwrap()
            .into_iter()
            .filter(|m| keep(m.uid))
            .map(|m| (m.date_ts.unwrap(), m.uid))
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.into_iter().take(limit).map(|(_, uid)| uid).collect()
    }

    fn plan(s: &LocalStore, q: &str, limit: u64) -> String {
        let (sql, args) = s.search_sql(&Query::parse(q).unwrap(), limit).unwrap();
        let mut st = s
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = st
            .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn many_and_few_matches_take_their_own_plan_and_agree_with_a_full_sort() {
        let n = FEW_MATCHES + 500;
        let (_dir, s) = store_of(n);
        let uids = |q: &str, limit: u64| -> Vec<u64> {
            s.search(&Query::parse(q).unwrap(), limit)
                .unwrap()
                .iter()
                .map(|m| m.uid)
                .collect()
        };
        // A word in every message: the newest page by walking the dates.
        assert!(plan(&s, "common", 50).contains("USING INDEX messages_date"));
        assert!(!plan(&s, "common", 50).contains("TEMP B-TREE"));
        assert_eq!(uids("common", 50), expected(&s, |_| true, 50));
        // All of them (no page): the matches looked up and sorted.
        assert_eq!(uids("common", 0), expected(&s, |_| true, n as usize));
        // A rare word: its few matches looked up and sorted.
        assert!(plan(&s, "rare", 50).contains("TEMP B-TREE"));
        assert_eq!(uids("rare", 50), expected(&s, |u| u.is_multiple_of(97), 50));
        // Dates alone: a range of the index.
        let from = 1_699_920_000 + 100 * DAY;
        let to = from + 30 * DAY;
        let q = "after:2024-02-22 before:2024-03-23";
        assert_eq!(Query::parse(q).unwrap().after, Some(from));
        assert!(plan(&s, q, 50).contains("USING INDEX messages_date"));
        let in_range = |u: u64| {
            let d = s.message(u).unwrap().unwrap().date_ts.unwrap();
            (from..to).contains(&d)
        };
        let want = expected(&s, in_range, 50);
        assert!(!want.is_empty());
        assert_eq!(uids(q, 50), want);
        // A word and dates, many matches.
        assert_eq!(uids(&format!("common {q}"), 20), expected(&s, in_range, 20));
    }
}
