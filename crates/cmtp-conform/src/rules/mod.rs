//! The rules: one small function per rule of docs/PROTOCOL.md that can be
//! provoked from outside, each with its section, a name and a description.
//!
//! The list [`RULES`] is data: the runner walks it in order, `--list`
//! prints it, `--only` filters it. A rule says what it needs beyond a
//! reachable target ([`Need`]); without it the rule is reported as not
//! testable, with the reason, instead of being run.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use cmtp_proto::crypto::PublicKey;
use cmtp_proto::names::{Account, Domain};
use cmtp_proto::payload::Greeting;
use rand_core::RngCore;

use crate::config::Config;
use crate::probe::{Check, Probe, Stop};
use crate::served::Served;

mod auth;
mod framing;
mod mail;
mod mailbox;
mod replies;
mod seed;
mod smtp;
mod tls;

/// What a rule needs beyond a reachable target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// `--domain`: the domain the target must serve.
    Domain,
    /// `--user` and `--password-file`: an account to log in as.
    Credentials,
    /// `--recipient` (or `--user`): an existing account to address mail to.
    LocalAccount,
    /// `--as-domain` and `--serve`: a domain the checker serves, routed to it by the target.
    ServedDomain,
    /// `--unreachable-domain`: a domain the target routes to where nothing answers.
    UnreachableDomain,
    /// `--slow`: the rule waits for one of the target's timeouts.
    Slow,
    /// `--rate-limit`: the rule locks an account out of logins for the target's window.
    RateLimit,
}

impl Need {
    /// Why a rule with this need cannot run without it.
    pub fn missing(self) -> &'static str {
        match self {
            Need::Domain => "needs --domain (the domain the target must serve)",
            Need::Credentials => "needs --user and --password-file (an account on the target)",
            Need::LocalAccount => {
                "needs --recipient or --user (an existing account on the target to address mail to)"
            }
            Need::ServedDomain => {
                "needs --as-domain and --serve (a domain the checker serves; the target must route it to the checker)"
            }
            Need::UnreachableDomain => {
                "needs --unreachable-domain (a domain the target routes to an address where nothing answers)"
            }
            Need::Slow => "needs --slow (waits for the target's timeouts)",
            Need::RateLimit => {
                "needs --rate-limit (locks an unused account out of logins for the target's window)"
            }
        }
    }

    /// Whether `cfg` provides it.
    pub fn met(self, cfg: &Config) -> bool {
        match self {
            Need::Domain => cfg.domain.is_some(),
            Need::Credentials => cfg.user.is_some() && cfg.password.is_some(),
            Need::LocalAccount => cfg.recipient.is_some() || cfg.user.is_some(),
            Need::ServedDomain => cfg.as_domain.is_some() && cfg.serve.is_some(),
            Need::UnreachableDomain => cfg.unreachable_domain.is_some(),
            Need::Slow => cfg.slow,
            Need::RateLimit => cfg.rate_limit,
        }
    }
}

/// One rule of the specification, checked from outside.
#[derive(Debug)]
pub struct Rule {
    /// Section of docs/PROTOCOL.md, e.g. `4.2`.
    pub section: &'static str,
    /// Short unique name, e.g. `word-too-long`.
    pub id: &'static str,
    /// What the target must do.
    pub description: &'static str,
    /// What the rule needs to run.
    pub needs: &'static [Need],
    pub(crate) check: fn(&mut Ctx<'_>) -> Check,
}

impl Rule {
    /// Whether `--only` selects this rule: its section or its id starts
    /// with one of `prefixes` (none given: every rule).
    pub fn selected(&self, prefixes: &[String]) -> bool {
        prefixes.is_empty()
            || prefixes.iter().any(|p| {
                let p = p.trim_start_matches('§');
                self.id.starts_with(p)
                    || self.section == p
                    || self.section.starts_with(&format!("{p}."))
            })
    }
}

/// What the first connection learned about the target.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// The banner line.
    pub banner: String,
    /// The domain the banner names.
    pub banner_domain: String,
    /// The OHAI greeting.
    pub greeting: Greeting,
}

/// What a rule works with.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) addr: SocketAddr,
    pub(crate) info: &'a TargetInfo,
    pub(crate) served: Option<&'a Served>,
    pub(crate) notes: Vec<String>,
}

impl Ctx<'_> {
    /// A new connection whose banner has been read.
    pub(crate) fn probe(&self) -> Check<Probe> {
        Probe::open(self.addr, Some(self.key()), self.cfg.reply_timeout)
    }

    /// A new connection after OHAI.
    pub(crate) fn greeted(&self) -> Check<(Probe, Greeting)> {
        let mut p = self.probe()?;
        let g = p.ohai()?;
        Ok((p, g))
    }

    /// The target's domain (from its greeting).
    pub(crate) fn domain(&self) -> &Domain {
        &self.info.greeting.domain
    }

    /// The target's server key (from its greeting).
    pub(crate) fn key(&self) -> PublicKey {
        self.info.greeting.key
    }

    /// The existing account mail may be addressed to.
    pub(crate) fn local_account(&self) -> Check<Account> {
        self.cfg
            .recipient
            .clone()
            .or_else(|| self.cfg.user.clone())
            .ok_or_else(|| Stop::NotTestable(Need::LocalAccount.missing().into()))
    }

    /// The domain the checker serves.
    pub(crate) fn served(&self) -> Check<&Served> {
        self.served
            .ok_or_else(|| Stop::NotTestable(Need::ServedDomain.missing().into()))
    }

    /// Adds a remark to the rule's line in the report.
    pub(crate) fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh account name no server has: `conform-<16 hex digits>`.
pub(crate) fn unused_account() -> Account {
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    Account::parse(&format!("conform-{}", hex::encode(b))).expect("a valid account")
}

/// `n` random bytes.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand_core::OsRng.fill_bytes(&mut b);
    b
}

macro_rules! rule {
    ($section:literal, $id:literal, $needs:expr, $check:path, $desc:literal) => {
        Rule {
            section: $section,
            id: $id,
            needs: $needs,
            check: $check,
            description: $desc,
        }
    };
}

use Need::*;

/// Every rule, in the order they run.
#[rustfmt::skip]
pub static RULES: &[Rule] = &[
    // §4.1 the banner
    rule!("4.1", "banner", &[], framing::banner,
        "Sends before anything else one line of at most 512 bytes ending in CR LF: `554 <domain> CMTP/2 <software> ready; TLS 1.3 follows; ...`"),
    rule!("4.1", "banner-names-domain", &[Domain], framing::banner_names_domain,
        "The banner names the domain given with --domain"),
    rule!("4.1", "tls13-handshake", &[], tls::tls13_handshake,
        "After the banner, a TLS 1.3 handshake agreeing on ALPN cmtp/2; the commands then go inside TLS"),
    rule!("4.1", "hello-before-banner", &[], tls::hello_before_banner,
        "A ClientHello sent at once, before the banner is read, is answered: the banner in clear, then the handshake"),
    rule!("4.1", "clear-cmtp1-refused", &[], smtp::clear_cmtp1,
        "A CMTP/1 command in clear after the banner (`OHAI\\0`) gets one line `554 5.7.0 <domain> CMTP/2: TLS 1.3 is required; ...` and a close within 1 s"),
    // §4.4 the protected connection
    rule!("4.4", "tls-raw-public-key", &[], tls::raw_public_key,
        "A client offering raw public keys is shown the server's Ed25519 key as one (RFC 7250): the key of the greeting"),
    rule!("4.4", "tls-certificate-fallback", &[], tls::certificate_fallback,
        "A TLS client offering no raw public keys gets a self-issued certificate whose SubjectPublicKeyInfo is the same Ed25519 key"),
    rule!("4.4", "tls13-only", &[], tls::tls13_only,
        "A ClientHello offering only TLS 1.2 is refused with an alert, never answered with a ServerHello"),
    rule!("4.4", "tls-key-exchange", &[], tls::key_exchange,
        "The key exchange uses a group the client offered; X25519MLKEM768 is preferred (X25519 is noted, not failed)"),
    // §4.2 command framing
    rule!("4.2", "pipelining", &[], framing::pipelining,
        "Commands sent together in one write are answered one reply each, in order"),
    rule!("4.2", "split-command", &[], framing::split_command,
        "A command that arrives one byte at a time is answered as if it came whole"),
    rule!("4.2", "seed-stateless", &[], framing::seed_stateless,
        "The seed commands are answered without OHAI first and in any order (OHAI is not a gate)"),
    rule!("4.2", "unknown-word", &[], framing::unknown_word,
        "A word that is not a command gets BADCOMMAND; the next command starts after its NUL"),
    rule!("4.2", "word-16-bytes", &[], framing::word_16_bytes,
        "A 16-byte word is framed (BADCOMMAND if unknown), the connection stays usable"),
    rule!("4.2", "lower-case-word", &[], framing::lower_case_word,
        "Command words are upper case: `noop` gets BADCOMMAND"),
    rule!("4.2", "word-too-long", &[], framing::word_too_long,
        "A word with no NUL within its first 17 bytes gets TOOLONG (bound to 32 zero bytes) and the connection closes"),
    rule!("4.2", "argument-255-bytes", &[], framing::argument_255_bytes,
        "A 255-byte argument is framed: an invalid one gets BADARGUMENT and the connection stays usable"),
    rule!("4.2", "argument-too-long", &[], framing::argument_too_long,
        "An argument with no NUL within 256 bytes gets TOOLONG and the connection closes"),
    rule!("4.2", "argument-not-utf8", &[], framing::argument_not_utf8,
        "An argument that is not UTF-8 gets BADARGUMENT; the connection stays usable"),
    rule!("4.2", "blob-over-8192", &[], framing::blob_over_limit,
        "A blob length over 8192 gets TOOLONG before any blob byte is sent, and the connection closes"),
    rule!("4.2", "blob-8192-wrong-size", &[], framing::blob_8192_wrong_size,
        "An 8192-byte blob where the command takes another size gets BADARGUMENT; it is skipped and the connection stays usable"),
    rule!("4.2", "blob-wrong-size", &[], framing::blob_wrong_size,
        "A blob of the wrong size (LOGINFINISH with 63 bytes) gets BADARGUMENT; it is skipped and the connection stays usable"),
    rule!("4.2", "too-many-errors", &[], framing::too_many_errors,
        "After 10 consecutive commands answered BADCOMMAND/BADARGUMENT the server sends TOOMANYERRORS and closes"),
    rule!("4.2", "error-streak-resets", &[], framing::error_streak_resets,
        "A good command between bad ones resets the count: 9 bad, NOOP, 9 bad keeps the connection open"),
    // §4.3 timeouts and limits on a connection
    rule!("4.3", "command-timeout", &[Slow], framing::command_timeout,
        "A command not complete within the command timeout gets TIMEOUT (bound to 32 zero bytes) and the connection closes"),
    rule!("4.3", "idle-timeout", &[Slow], framing::idle_timeout,
        "A connection idle for the idle timeout gets TIMEOUT (bound to 32 zero bytes) and closes"),
    rule!("4.3", "message-timeout", &[Slow], framing::message_timeout,
        "A message that does not arrive within 30 s + size / rate after MAIL gets TIMEOUT and the connection closes"),
    rule!("4.3", "message-timeout-after-refusal", &[Slow], framing::message_timeout_after_refusal,
        "When the rest of a message refused early does not arrive in time, the server still sends TIMEOUT and closes"),
    rule!("4.3", "connections-per-peer", &[], framing::connections_per_peer,
        "Over the per-address connection limit the banner is `421 <domain> CMTP/2 <reason>` and the connection closes"),
    // §5 replies
    rule!("5.1", "reply-format", &[], replies::reply_format,
        "A reply is u32 version 1 | status NUL | u64 length | body | 64-byte signature"),
    rule!("5.3", "signature-binding", &[], replies::signature_binding,
        "Every reply is signed by the greeting's key over nonce, its 0-based position and H(the command's bytes)"),
    rule!("5.3", "binding-before-ohai", &[], replies::binding_before_ohai,
        "Replies before OHAI are bound to the nonce OHAI gives later, counting from 0"),
    rule!("5.3", "nonce-per-connection", &[], replies::nonce_per_connection,
        "The nonce is fresh per connection and the same for every OHAI on one connection"),
    rule!("5.3", "greeting-matches-banner", &[], replies::greeting_matches_banner,
        "The greeting names the banner's domain, and every connection shows the same server key"),
    rule!("6.1", "greeting-names-domain", &[Domain], replies::greeting_names_domain,
        "The greeting names the domain given with --domain"),
    // §6 the seed commands
    rule!("6.1", "ohai-fields", &[], seed::ohai_fields,
        "OHAI: SUCCESS with LF-ended `key: value` lines domain, protocol, software, crypto, extensions, key, fingerprint, nonce, max-message-size, max-attachments, in this order"),
    rule!("6.3", "keyrequest-server-key", &[], seed::keyrequest_server_key,
        "KEYREQUEST \"\" \"\": SUCCESS with a server key bundle, self-signed, valid now, for the greeting's key (§9.3)"),
    rule!("6.3", "keyrequest-server-key-own-domain", &[], seed::keyrequest_server_key_own_domain,
        "KEYREQUEST \"\" <own domain>: the same server key bundle"),
    rule!("6.3", "keyrequest-unknown-user", &[], seed::keyrequest_unknown_user,
        "KEYREQUEST for an account that does not exist: KEYNOTAVAILABLE (domain empty or the server's own)"),
    rule!("6.3", "keyrequest-user", &[LocalAccount], seed::keyrequest_user,
        "KEYREQUEST <account> \"\": SUCCESS with the account's key statement signed by the server key, valid now (§9.2)"),
    rule!("6.3", "keyrequest-invalid-names", &[], seed::keyrequest_invalid_names,
        "KEYREQUEST with an invalid account or domain: BADARGUMENT, the connection stays usable"),
    rule!("3", "names-fold-case", &[], seed::names_fold_case,
        "Names in arguments are folded to lower case and lose one trailing dot: KEYREQUEST \"\" <DOMAIN.> is the own bundle"),
    rule!("6.3", "keyrequest-remote-bundle", &[ServedDomain], seed::keyrequest_remote_bundle,
        "KEYREQUEST \"\" <other domain>: the other server's bundle, fetched and returned unchanged"),
    rule!("6.3", "keyrequest-remote-user", &[ServedDomain], seed::keyrequest_remote_user,
        "KEYREQUEST <user> <other domain>: the other server's statement, returned unchanged"),
    rule!("6.3", "keyrequest-remote-unknown", &[ServedDomain], seed::keyrequest_remote_unknown,
        "KEYREQUEST for an account the other domain does not have: KEYNOTAVAILABLE"),
    rule!("6.3", "keyrequest-remote-unreachable", &[UnreachableDomain], seed::keyrequest_remote_unreachable,
        "KEYREQUEST for a domain whose server cannot be reached: TEMPFAILURE"),
    rule!("6.4", "noop", &[], seed::noop,
        "NOOP: SUCCESS with an empty body"),
    rule!("6.6", "help", &[], seed::help,
        "HELP: SUCCESS with UTF-8 text naming every command"),
    rule!("6.7", "obai", &[], seed::obai,
        "OBAI: SUCCESS with the body `bye`, then the server closes the connection"),
    // §7 messages
    rule!("7.1", "mail-bad-version", &[], mail::bad_version,
        "MAIL with message version 2: BADMESSAGE (bound to H(\"MAIL\\0\"))"),
    rule!("7.1", "mail-too-many-attachments", &[], mail::too_many_attachments,
        "MAIL announcing more attachments than max-attachments: TOOBIG from the header alone, and the connection closes"),
    rule!("7.1", "mail-log-too-long", &[], mail::log_too_long,
        "MAIL announcing a log over the limit: TOOBIG from the header alone, and the connection closes"),
    rule!("7.1", "mail-too-big", &[], mail::too_big,
        "MAIL announcing a body over max-message-size: TOOBIG from the header alone, and the connection closes"),
    rule!("7.1", "mail-size-overflow", &[], mail::size_overflow,
        "MAIL announcing lengths whose sum overflows 64 bits: TOOBIG (checked arithmetic), and the connection closes"),
    rule!("7.1", "mail-name-too-long", &[], mail::name_too_long,
        "MAIL with a name field that has no NUL within 256 bytes: BADMESSAGE"),
    rule!("7.4", "mail-invalid-names", &[], mail::invalid_names,
        "MAIL with a non-canonical name (`Bob`, an upper-case domain): BADMESSAGE, the rest is discarded and the connection stays usable"),
    rule!("7.4", "mail-nosuchuser", &[], mail::nosuchuser,
        "MAIL for an account of the server's domain that does not exist: DELIVERYFAILURE NOSUCHUSER, the connection stays usable"),
    rule!("7.4", "mail-norelay", &[], mail::norelay,
        "MAIL for another domain, not logged in as its source: DELIVERYFAILURE NORELAY (never an open relay)"),
    rule!("7.4", "mail-spoofed", &[LocalAccount], mail::spoofed,
        "MAIL from outside claiming the server's own domain as source: DELIVERYFAILURE SPOOFED"),
    rule!("7.4", "mail-source-unreachable", &[LocalAccount, UnreachableDomain], mail::source_unreachable,
        "MAIL from a domain whose key cannot be obtained now: TEMPFAILURE"),
    rule!("7.4", "mail-bad-trailer", &[LocalAccount, ServedDomain], mail::bad_trailer,
        "MAIL from another domain with a trailer that does not verify under its key: DELIVERYFAILURE BADSIGNATURE"),
    rule!("7.4", "mail-accepted", &[LocalAccount, ServedDomain], mail::accepted,
        "MAIL from another domain with a valid trailer: SUCCESS whose body is the receipt statement for its hash, the signed reply being the receipt (§10.1); with --user as the recipient, stored with its trailer and a log line"),
    rule!("7.4", "mail-duplicate", &[LocalAccount, ServedDomain], mail::duplicate,
        "The same message twice: SUCCESS both times, with receipts for the same hash; with --user as the recipient, stored once"),
    rule!("7.1", "mail-attachment-too-big", &[LocalAccount, ServedDomain], mail::attachment_too_big,
        "MAIL whose attachment length takes an accepted envelope over max-message-size: TOOBIG as the length arrives, and the connection closes"),
    rule!("7.4", "mail-loop", &[LocalAccount, ServedDomain], mail::mail_loop,
        "MAIL whose log already holds as many lines as the hop limit: DELIVERYFAILURE LOOP"),
    // §12–§13 with credentials
    rule!("12.3", "login", &[Credentials], mailbox::login,
        "LOGIN + LOGINFINISH with the password and the login context of this connection's channel binding: SUCCESS with the xzibit, signed by the server key, holding the account's key"),
    rule!("12.4", "keylogin", &[Credentials], mailbox::keylogin,
        "KEYLOGIN with the identity key's signature over this connection's channel binding: SUCCESS, and LIST works"),
    rule!("12.4", "keylogin-relayed", &[Credentials], mailbox::keylogin_relayed,
        "A KEYLOGIN signature made for another connection's channel binding (a relayed login), or over the nonce (CMTP/1): AUTHFAILED"),
    rule!("13", "login-ends-session", &[Credentials], mailbox::login_ends_session,
        "A logged-in connection is logged out as soon as another LOGIN starts: LIST then answers AUTHREQUIRED"),
    rule!("13", "list", &[Credentials], mailbox::list,
        "LIST: SUCCESS with u32 count | entries, oldest first"),
    rule!("7.3", "submission", &[Credentials], mailbox::submission,
        "MAIL from the logged-in user with a zero trailer: SUCCESS; the stored copy carries the zero trailer or the server's (§7.3) and a log line"),
    rule!("7.4", "submission-spoofed", &[Credentials], mailbox::submission_spoofed,
        "Logged in, MAIL whose source is another account of the domain: DELIVERYFAILURE SPOOFED"),
    rule!("13", "fetch-delete", &[Credentials], mailbox::fetch_delete,
        "FETCH returns the stored message; DELETE removes it; both then answer FAILURE for it"),
    rule!("13", "fetch-bad-id", &[Credentials], mailbox::fetch_bad_id,
        "FETCH of an id that is not canonical decimal: BADARGUMENT; of an id not in the mailbox: FAILURE"),
    rule!("7.3", "relay", &[Credentials, ServedDomain], mailbox::relay,
        "Mail submitted for another domain is relayed there with the server's trailer and the same hash"),
    rule!("12.5", "password-change-bound", &[Credentials], mailbox::password_change_bound,
        "PASSWORD + REGFINISH whose registration proof is bound to another connection's channel binding: BADARGUMENT; bound to this one: SUCCESS (same password, same key)"),
    // §6.5, §12, §13 without credentials (these count as failed logins: after the
    // logged-in rules, so that a run does not rate-limit its own logins)
    rule!("6.5", "loginfinish-without-login", &[], auth::loginfinish_without_login,
        "LOGINFINISH without a LOGIN in progress: FAILURE"),
    rule!("6.5", "login-invalid-account", &[], auth::login_invalid_account,
        "LOGIN with an invalid account name: BADARGUMENT"),
    rule!("12.3", "login-unknown-account", &[], auth::login_unknown_account,
        "LOGIN for an unknown account: SUCCESS with ksf[12] | KE2[320]; LOGINFINISH: AUTHFAILED"),
    rule!("12.3", "login-indistinguishable", &[LocalAccount], auth::login_indistinguishable,
        "LOGIN for an unknown account and for a real one (wrong password) give replies of the same shape and size"),
    rule!("12.4", "keylogin-bad-signature", &[], auth::keylogin_bad_signature,
        "KEYLOGIN with a signature that does not verify: AUTHFAILED"),
    rule!("12.2", "register-invalid-invite", &[], auth::register_invalid_invite,
        "REGISTER with an invite token over 128 characters or outside A-Z a-z 0-9 - _: BADARGUMENT"),
    rule!("13", "extensions-need-login", &[], auth::extensions_need_login,
        "LIST, FETCH, DELETE and PASSWORD without a login: AUTHREQUIRED"),
    // §16 SMTP coexistence
    rule!("16", "smtp-ehlo", &[], smtp::ehlo,
        "An EHLO line gets `554 5.5.0 <domain> this is a CMTP server (CMTP/2), SMTP is not spoken here` in clear and a close within 1 s"),
    rule!("16", "smtp-quit", &[], smtp::quit,
        "A QUIT line gets `221 2.0.0 <domain> closing: this is a CMTP server` and a close within 1 s"),
    rule!("16", "smtp-verbs", &[], smtp::verbs,
        "Every other SMTP command line (any case; NOOP/HELP with a space, tab, CR or LF) gets the 554 refusal and a close within 1 s"),
    // last: it locks an account out of logins
    rule!("12.3", "rate-limited", &[RateLimit], auth::rate_limited,
        "After the per-account limit of failed logins, LOGIN answers RATELIMITED saying how long to wait"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!(seen.insert(r.id), "duplicate rule id {}", r.id);
        }
    }

    #[test]
    fn only_selects_by_section_or_id() {
        let r = RULES.iter().find(|r| r.id == "word-too-long").unwrap();
        assert!(r.selected(&[]));
        assert!(r.selected(&["4.2".into()]));
        assert!(r.selected(&["§4".into()]));
        assert!(r.selected(&["word-".into()]));
        assert!(!r.selected(&["4.3".into()]));
        assert!(!r.selected(&["4.2/".into()]));
    }
}
