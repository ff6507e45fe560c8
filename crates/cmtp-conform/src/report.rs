//! Results: one entry per rule, a summary, and their text and JSON forms.

use serde::Serialize;

use crate::rules::Rule;

/// How a rule came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// The target did what the rule asks.
    Pass {
        /// Remarks that do not fail the rule.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// The target did not.
    Fail {
        /// What the specification asks for.
        expected: String,
        /// What the target did.
        got: String,
        /// Remarks gathered before the failure.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// The rule could not be checked; `reason` says what it needs.
    NotTestable {
        /// Why not.
        reason: String,
    },
}

/// The result of one rule.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    /// Section of docs/PROTOCOL.md.
    pub section: &'static str,
    /// The rule's name.
    pub id: &'static str,
    /// What the rule checks.
    pub description: &'static str,
    /// How it came out.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How long it took, in seconds.
    pub seconds: f64,
}

/// Counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Rules run or reported.
    pub total: usize,
    /// Rules passed.
    pub passed: usize,
    /// Rules failed.
    pub failed: usize,
    /// Rules not testable.
    pub not_testable: usize,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The checker and its version.
    pub checker: String,
    /// The target as given.
    pub target: String,
    /// The domain the target serves (from its greeting).
    pub domain: String,
    /// The target's software (from its greeting).
    pub software: String,
    /// Fingerprint of the target's server key.
    pub fingerprint: String,
    /// The domain the checker served, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_domain: Option<String>,
    /// One entry per rule, in order.
    pub rules: Vec<RuleReport>,
    /// The counts.
    pub summary: Summary,
}

impl Report {
    /// Whether any rule failed.
    pub fn failed(&self) -> bool {
        self.summary.failed > 0
    }

    /// Recomputes the summary from the rules.
    pub(crate) fn tally(&mut self) {
        let mut s = Summary {
            total: self.rules.len(),
            ..Summary::default()
        };
        for r in &self.rules {
            match r.outcome {
                Outcome::Pass { .. } => s.passed += 1,
                Outcome::Fail { .. } => s.failed += 1,
                Outcome::NotTestable { .. } => s.not_testable += 1,
            }
        }
        self.summary = s;
    }
}

/// The text form of one result: one line, plus indented lines for a
/// failure's expectation and notes.
pub fn text_line(r: &RuleReport) -> String {
    let head = |word: &str| format!("{word:<12} §{:<5} {}: {}", r.section, r.id, r.description);
    let mut out = String::new();
    let notes = match &r.outcome {
        Outcome::Pass { notes } => {
            out.push_str(&head("pass"));
            notes.as_slice()
        }
        Outcome::Fail {
            expected,
            got,
            notes,
        } => {
            out.push_str(&head("FAIL"));
            out.push_str(&format!(
                "\n{:20}expected: {expected}\n{:20}got:      {got}",
                "", ""
            ));
            notes.as_slice()
        }
        Outcome::NotTestable { reason } => {
            out.push_str(&head("not testable"));
            out.push_str(&format!("\n{:20}({reason})", ""));
            &[]
        }
    };
    for n in notes {
        out.push_str(&format!("\n{:20}note: {n}", ""));
    }
    out
}

/// The closing summary line.
pub fn text_summary(s: &Summary) -> String {
    format!(
        "{} rules: {} passed, {} failed, {} not testable",
        s.total, s.passed, s.failed, s.not_testable
    )
}

/// One line of `--list`.
pub fn list_line(r: &Rule) -> String {
    let needs = if r.needs.is_empty() {
        String::new()
    } else {
        let flags: Vec<&str> = r
            .needs
            .iter()
            .map(|n| match n {
                crate::rules::Need::Domain => "--domain",
                crate::rules::Need::Credentials => "--user",
                crate::rules::Need::LocalAccount => "--recipient",
                crate::rules::Need::ServedDomain => "--as-domain",
                crate::rules::Need::UnreachableDomain => "--unreachable-domain",
                crate::rules::Need::Slow => "--slow",
                crate::rules::Need::RateLimit => "--rate-limit",
            })
            .collect();
        format!(" [needs {}]", flags.join(" "))
    };
    format!("§{:<5} {}{needs}: {}", r.section, r.id, r.description)
}
