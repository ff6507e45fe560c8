//! Printing the administration commands' results: aligned text with human
//! sizes and ages for people, or one JSON document on stdout (`-o json`)
//! for scripts. Text that came from outside (a remote server's error, a
//! name) is stripped of control characters before it reaches a terminal.

use clap::ValueEnum;
use serde_json::Value;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Prints a command's result in the chosen format.
pub(crate) struct Printer {
    pub(crate) format: Output,
}

impl Printer {
    /// Prints `json` (JSON mode) or the text `text` builds (text mode, on
    /// stdout; nothing is printed for an empty text).
    pub(crate) fn emit(&self, json: Value, text: impl FnOnce() -> String) {
        match self.format {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("JSON serialises")
            ),
            Output::Text => {
                let t = text();
                if !t.is_empty() {
                    print!("{t}");
                    if !t.ends_with('\n') {
                        println!();
                    }
                }
            }
        }
    }

    /// A remark for people (stderr), in text mode only: JSON output stays a
    /// single document and stderr stays quiet for scripts.
    pub(crate) fn note(&self, text: &str) {
        if self.format == Output::Text {
            eprintln!("{text}");
        }
    }
}

/// Removes control characters (terminal escapes) from one line of text.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `512 B`, `1.5 KiB`, `64.0 MiB`.
pub(crate) fn size(n: u64) -> String {
    cmtp_server::quota::human_bytes(n)
}

/// A duration for people: `45s`, `12m`, `3h 5m`, `2d 4h`.
pub(crate) fn age(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// When something happens relative to `now`: `now`, `in 5m`, `5m ago`.
pub(crate) fn when(at: u64, now: u64) -> String {
    if at > now {
        format!("in {}", age(at - now))
    } else if now - at < 1 {
        "now".into()
    } else {
        format!("{} ago", age(now - at))
    }
}

/// Truncates to `max` characters with an ellipsis.
pub(crate) fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_people_say_them() {
        assert_eq!(age(45), "45s");
        assert_eq!(age(12 * 60 + 5), "12m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(3 * 3600 + 5 * 60), "3h 5m");
        assert_eq!(age(2 * 86_400 + 4 * 3600 + 7), "2d 4h");
        assert_eq!(age(86_400), "1d");
        assert_eq!(when(100, 40), "in 1m");
        assert_eq!(when(40, 100), "1m ago");
        assert_eq!(when(100, 100), "now");
        assert_eq!(clean("a\x1b[31mb\n"), "a [31mb ");
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}
