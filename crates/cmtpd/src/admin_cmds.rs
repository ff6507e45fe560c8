//! The administration commands: init, users, queue, key, config, reload,
//! backup and restore. Each prints text for people or, with `-o json`, one
//! JSON document (see [`crate::out`]).

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;
use cmtp_proto::names::Account;
use cmtp_server::admin;
use cmtp_server::config::{Config, flatten, reloadable};
use cmtp_server::state::{now, rfc3339};
use serde_json::{Value, json};

use crate::out::{Printer, age, clean, fit, size, when};
use crate::{Cli, resolve_config};

#[derive(Subcommand, Debug)]
pub(crate) enum UserCmd {
    /// Print a one-time invite token for a new account.
    Invite {
        /// The account name (the part before @).
        name: String,
        /// Hours the token stays valid (default from the configuration: 168).
        #[arg(long)]
        valid_hours: Option<u64>,
    },
    /// Create an account directly (keys are generated here, as a client would).
    Add {
        /// The account name.
        name: String,
        /// Read the password from the first line of this file instead of a prompt.
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
    },
    /// List accounts with their mailbox sizes, quotas and aliases.
    List,
    /// Delete an account with all its mail and keys.
    Delete {
        /// The account name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Set the mailbox quota (e.g. 500M, 2G); `none` removes it. Mail to a
    /// full mailbox is refused with TEMPFAILURE and its owner is told.
    Quota {
        /// The account name.
        name: String,
        /// The quota: bytes, or with K, M, G, T (powers of 1024); `none`.
        size: String,
    },
    /// Manage aliases: other names that deliver to an account.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Clear the failed-login rate limit of an account on every running node.
    Unlock {
        /// The account name.
        name: String,
    },
    /// Print a one-time reset token with which the user sets a new password
    /// and gets a new identity key (`cmtp reset`). Mail sealed to the old key
    /// stays readable only on a device that still holds the old key.
    Reset {
        /// The account name.
        name: String,
        /// Hours the token stays valid (default from the configuration: 24).
        #[arg(long)]
        valid_hours: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AliasCmd {
    /// Make ALIAS another name of ACCOUNT: mail to ALIAS@domain is delivered
    /// to ACCOUNT's mailbox.
    Add {
        /// The new name.
        alias: String,
        /// The account it delivers to.
        account: String,
    },
    /// Remove an alias.
    Remove {
        /// The alias.
        alias: String,
    },
    /// List aliases.
    List,
}

#[derive(Subcommand, Debug)]
pub(crate) enum QueueCmd {
    /// List queued messages, with sizes and ages.
    List,
    /// Show one queued message.
    Show {
        /// The queue id (from `queue list`).
        id: u64,
    },
    /// Make one queued message (or, without ID, every deferred one that is
    /// not held) due now.
    Retry {
        /// The queue id.
        id: Option<u64>,
    },
    /// Delete a queued message without notifying its sender.
    Delete {
        /// The queue id.
        id: u64,
    },
    /// Hold a queued message: it is not attempted until released.
    Hold {
        /// The queue id.
        id: u64,
    },
    /// Release a held message.
    Release {
        /// The queue id.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCmd {
    /// Print the server key's fingerprint and the DNS TXT record for it.
    Show,
    /// Replace the server key; peers that pinned the old key accept the new
    /// one through a rotation statement signed by the old key. Restart cmtpd
    /// (every node of a cluster) afterwards.
    Rotate,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCmd {
    /// Check the configuration file; exit code 0 if it is usable, 1 if not.
    Check,
    /// Print the configuration in effect (every key, defaults filled in,
    /// paths resolved), as TOML; `--defaults`: the built-in defaults.
    Show {
        /// Print the defaults instead.
        #[arg(long)]
        defaults: bool,
    },
}

fn account(name: &str) -> anyhow::Result<Account> {
    Account::parse(name).with_context(|| format!("account name {name:?}"))
}

/// `cmtpd init`.
pub(crate) async fn init(
    p: &Printer,
    cfg: &Config,
    config_path: &Path,
    wrote: bool,
    host: Option<&str>,
) -> anyhow::Result<()> {
    let prepared = admin::prepare(cfg).await?;
    let host = host
        .map(str::to_owned)
        .unwrap_or_else(|| format!("cmtp.{}", cfg.domain));
    let mut records = admin::dns_records(cfg, &prepared.key, &host);
    // The SMTP gateway's records (PROTOCOL.md §19): MX, SPF, DKIM, DMARC.
    let dkim_path = cfg.smtp.dkim_key_path(&cfg.data_dir);
    let dkim = cmtp_server::smtp::dkim::ensure_key(&dkim_path)?;
    let mx_host = cfg.smtp.hostname.clone().unwrap_or(host.clone());
    records.push_str(&cmtp_server::smtp::dkim::mail_dns_records(
        &cfg.domain,
        &mx_host,
        &cfg.smtp.dkim_selector,
        &dkim,
    ));
    let mut warnings = Vec::new();
    if cfg.loopback_only() {
        warnings.push(format!(
            "{} listens on {} only: reachable from this machine alone, not at the address \
             these DNS records publish. For other domains to reach it, set \
             listen = [\"0.0.0.0:9001\", \"[::]:9001\"] (or the public address) there, \
             or create the configuration with `cmtpd init --listen 0.0.0.0:9001`.",
            config_path.display(),
            cfg.listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for w in &warnings {
        p.note(&format!("cmtpd: warning: {w}"));
    }
    p.emit(
        json!({
            "config": config_path,
            "config_created": wrote,
            "data_dir": cfg.data_dir,
            "key_file": cfg.key_path(),
            "key_created": prepared.key_created,
            "fingerprint": prepared.key.public().fingerprint_hex(),
            "dkim_key_file": dkim_path,
            "listen": cfg.listen,
            "dns_records": records.lines().filter(|l| !l.starts_with(';')).collect::<Vec<_>>(),
            "warnings": warnings,
        }),
        || {
            format!(
                "configuration:  {} ({})\ndata directory: {}\nserver key:     {} ({})\nfingerprint:    {}\n\n{}",
                config_path.display(),
                if wrote { "created" } else { "existing" },
                cfg.data_dir.display(),
                cfg.key_path().display(),
                if prepared.key_created {
                    "created"
                } else {
                    "existing"
                },
                prepared.key.public().fingerprint_hex(),
                records
            )
        },
    );
    Ok(())
}

/// `cmtpd user ...`.
pub(crate) async fn user(p: &Printer, cfg: &Config, cmd: &UserCmd) -> anyhow::Result<()> {
    let store = admin::open_existing(cfg).await?;
    let d = &cfg.domain;
    match cmd {
        UserCmd::Invite { name, valid_hours } => {
            let account = account(name)?;
            let hours = valid_hours.unwrap_or(cfg.accounts.invite_validity_hours);
            let (token, expires) = admin::invite(&store, &account, hours * 3600).await?;
            p.note(&format!(
                "invite for {account}@{d} valid until {}; register with:\n  cmtp register {account}@{d} --invite {token}",
                rfc3339(expires)
            ));
            p.emit(
                json!({"account": account.as_str(), "address": format!("{account}@{d}"),
                       "token": token, "expires_at": expires, "expires": rfc3339(expires)}),
                || token.clone(),
            );
        }
        UserCmd::Add {
            name,
            password_file,
        } => {
            let account = account(name)?;
            let password = match password_file {
                Some(f) => admin::read_password_file(f)?,
                None => prompt_new_password()?,
            };
            let fp = admin::add_user(
                cfg,
                &store,
                &account,
                password.as_bytes(),
                cfg.accounts.ksf_floor(),
            )
            .await?;
            p.emit(
                json!({"account": account.as_str(), "address": format!("{account}@{d}"), "fingerprint": fp}),
                || format!("created {account}@{d} (key fingerprint {fp})"),
            );
        }
        UserCmd::List => {
            let users = admin::list_users(&store).await?;
            let aliases = admin::list_aliases(&store).await?;
            let of = |a: &str| -> Vec<String> {
                aliases
                    .iter()
                    .filter(|x| x.account == a)
                    .map(|x| x.alias.clone())
                    .collect()
            };
            let json: Vec<Value> = users
                .iter()
                .map(|u| {
                    json!({"account": u.account, "messages": u.messages, "bytes": u.bytes,
                           "quota": u.quota, "created_at": u.created_at,
                           "created": rfc3339(u.created_at), "aliases": of(&u.account)})
                })
                .collect();
            p.emit(Value::Array(json), || {
                let mut t = format!(
                    "{:<24} {:>8} {:>10} {:>10}  {:<20} aliases\n",
                    "account", "messages", "size", "quota", "created"
                );
                for u in &users {
                    t.push_str(&format!(
                        "{:<24} {:>8} {:>10} {:>10}  {:<20} {}\n",
                        u.account,
                        u.messages,
                        size(u.bytes),
                        u.quota.map_or("-".into(), size),
                        rfc3339(u.created_at),
                        of(&u.account).join(", ")
                    ));
                }
                t.push_str(&format!("{} account(s)", users.len()));
                t
            });
        }
        UserCmd::Delete { name, yes } => {
            let account = account(name)?;
            if !yes
                && !confirm(
                    &format!(
                        "Delete {account}@{d} with all its mail and keys? Type the account name to confirm: "
                    ),
                    account.as_str(),
                )?
            {
                bail!("not confirmed; nothing deleted");
            }
            if !admin::delete_user(&store, &account).await? {
                bail!("no account {account}")
            }
            p.emit(
                json!({"account": account.as_str(), "deleted": true}),
                || format!("deleted {account}@{d}"),
            );
        }
        UserCmd::Quota { name, size: text } => {
            let account = account(name)?;
            let quota = match text.trim().to_ascii_lowercase().as_str() {
                "none" | "off" | "unlimited" => None,
                _ => Some(cmtp_server::quota::parse_bytes(text).map_err(|e| anyhow::anyhow!(e))?),
            };
            admin::set_quota(&store, &account, quota).await?;
            let usage = store_usage(&store, &account).await?;
            p.emit(
                json!({"account": account.as_str(), "quota": quota, "bytes": usage}),
                || match quota {
                    Some(q) => format!(
                        "quota of {account}@{d}: {} ({} used){}",
                        size(q),
                        size(usage),
                        if usage >= q {
                            "; the mailbox is full: new mail is refused until it shrinks"
                        } else {
                            ""
                        }
                    ),
                    None => format!("{account}@{d} has no quota ({} used)", size(usage)),
                },
            );
        }
        UserCmd::Alias(a) => match a {
            AliasCmd::Add { alias, account: to } => {
                let (alias, to) = (account(alias)?, account(to)?);
                admin::add_alias(&store, &alias, &to).await?;
                p.emit(
                    json!({"alias": alias.as_str(), "account": to.as_str()}),
                    || format!("{alias}@{d} now delivers to {to}@{d}"),
                );
            }
            AliasCmd::Remove { alias } => {
                let alias = account(alias)?;
                if !admin::remove_alias(&store, &alias).await? {
                    bail!("no alias {alias}");
                }
                p.emit(json!({"alias": alias.as_str(), "removed": true}), || {
                    format!("removed the alias {alias}@{d}")
                });
            }
            AliasCmd::List => {
                let list = admin::list_aliases(&store).await?;
                let json: Vec<Value> = list
                    .iter()
                    .map(|a| json!({"alias": a.alias, "account": a.account, "created_at": a.created_at}))
                    .collect();
                p.emit(Value::Array(json), || {
                    let mut t = format!("{:<24} {:<24} created\n", "alias", "account");
                    for a in &list {
                        t.push_str(&format!(
                            "{:<24} {:<24} {}\n",
                            a.alias,
                            a.account,
                            rfc3339(a.created_at)
                        ));
                    }
                    t.push_str(&format!("{} alias(es)", list.len()));
                    t
                });
            }
        },
        UserCmd::Unlock { name } => {
            let account = account(name)?;
            admin::unlock(&store, &account).await?;
            p.emit(
                json!({"account": account.as_str(), "unlocked": true,
                       "applied_within_secs": cmtp_server::housekeeping::UNLOCK_POLL.as_secs()}),
                || {
                    format!(
                        "cleared the failed-login limit of {account}@{d}; running servers apply it within {} seconds",
                        cmtp_server::housekeeping::UNLOCK_POLL.as_secs()
                    )
                },
            );
        }
        UserCmd::Reset { name, valid_hours } => {
            let account = account(name)?;
            let hours = valid_hours.unwrap_or(cfg.accounts.reset_validity_hours);
            let (token, expires) = admin::reset_token(&store, &account, hours * 3600).await?;
            let warning = "the user chooses a new password AND gets a new identity key. Mail \
                 already sealed to the old key stays readable only on a device that still holds \
                 the old key: end-to-end encryption has no back door, and this server never had \
                 the key. Until the reset is done, the old password keeps working.";
            p.note(&format!(
                "reset token for {account}@{d} valid until {}; the user runs:\n  cmtp reset {account}@{d} --token {token}\nwarning: {warning}",
                rfc3339(expires)
            ));
            p.emit(
                json!({"account": account.as_str(), "token": token, "expires_at": expires,
                       "expires": rfc3339(expires), "warning": warning}),
                || token.clone(),
            );
        }
    }
    Ok(())
}

async fn store_usage(store: &cmtp_store::AnyStore, account: &Account) -> anyhow::Result<u64> {
    use cmtp_store::Store;
    Ok(store.mailbox_usage(account.as_str()).await?.bytes)
}

fn entry_json(e: &cmtp_store::OutboundEntry, t: u64) -> Value {
    json!({
        "id": e.id,
        "hash": hex_hash(&e.hash),
        "sender": e.sender,
        "destination": e.destination,
        "size": e.size,
        "created_at": e.created_at,
        "age_secs": t.saturating_sub(e.created_at),
        "expires_at": e.expires_at,
        "next_attempt_at": e.next_attempt_at,
        "attempts": e.attempts,
        "last_error": e.last_error,
        "held": e.held,
        "lease_owner": e.lease_owner,
        "lease_until": e.lease_until,
        "state": state(e, t),
    })
}

fn hex_hash(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn state(e: &cmtp_store::OutboundEntry, t: u64) -> &'static str {
    if e.held {
        "held"
    } else if e.lease_until.is_some_and(|u| u > t) {
        "sending"
    } else if e.next_attempt_at <= t {
        "due"
    } else {
        "deferred"
    }
}

/// `cmtpd queue ...`.
pub(crate) async fn queue(p: &Printer, cfg: &Config, cmd: &QueueCmd) -> anyhow::Result<()> {
    let store = admin::open_existing(cfg).await?;
    let t = now();
    match cmd {
        QueueCmd::List => {
            let entries = admin::queue(&store).await?;
            let stats = admin::queue_stats(&store).await?;
            p.note(&format!("{} message(s) queued", entries.len()));
            p.emit(
                json!({
                    "entries": entries.iter().map(|e| entry_json(e, t)).collect::<Vec<_>>(),
                    "total": stats.total, "due": stats.due, "deferred": stats.deferred,
                    "held": stats.held, "sending": stats.leased, "bytes": stats.bytes,
                    "oldest_age_secs": stats.oldest_age,
                }),
                || {
                    let mut s = format!(
                        "{:>6}  {:<8} {:>9} {:>6} {:>4}  {:<26} {:<28} {:<10} last error\n",
                        "id", "state", "size", "age", "try", "sender", "destination", "next"
                    );
                    for e in &entries {
                        s.push_str(&format!(
                            "{:>6}  {:<8} {:>9} {:>6} {:>4}  {:<26} {:<28} {:<10} {}\n",
                            e.id,
                            state(e, t),
                            size(e.size),
                            age(t.saturating_sub(e.created_at)),
                            e.attempts,
                            fit(&format!("{}@{}", e.sender, cfg.domain), 26),
                            fit(&clean(&e.destination), 28),
                            if e.held {
                                "-".into()
                            } else {
                                when(e.next_attempt_at, t)
                            },
                            fit(&clean(e.last_error.as_deref().unwrap_or("-")), 60)
                        ));
                    }
                    s.push_str(&format!(
                        "{} message(s), {}: {} due, {} deferred, {} held, {} being sent{}",
                        stats.total,
                        size(stats.bytes),
                        stats.due,
                        stats.deferred,
                        stats.held,
                        stats.leased,
                        stats
                            .oldest_age
                            .map_or(String::new(), |a| format!("; oldest {}", age(a)))
                    ));
                    s
                },
            );
        }
        QueueCmd::Show { id } => {
            let e = admin::queue_entry(&store, *id).await?;
            p.emit(entry_json(&e, t), || {
                format!(
                    "id:           {}\nhash:         {}\nstate:        {}\nsender:       {}@{}\n\
                     destination:  {}\nsize:         {} ({} bytes)\nqueued:       {} ({} ago)\n\
                     expires:      {} ({})\nnext attempt: {}\nattempts:     {}\nlast error:   {}\n\
                     lease:        {}",
                    e.id,
                    hex_hash(&e.hash),
                    state(&e, t),
                    e.sender,
                    cfg.domain,
                    clean(&e.destination),
                    size(e.size),
                    e.size,
                    rfc3339(e.created_at),
                    age(t.saturating_sub(e.created_at)),
                    rfc3339(e.expires_at),
                    when(e.expires_at, t),
                    if e.held {
                        "none while held".into()
                    } else {
                        format!(
                            "{} ({})",
                            rfc3339(e.next_attempt_at),
                            when(e.next_attempt_at, t)
                        )
                    },
                    e.attempts,
                    clean(e.last_error.as_deref().unwrap_or("-")),
                    match (&e.lease_owner, e.lease_until) {
                        (Some(o), Some(u)) if u > t => format!("{} until {}", clean(o), rfc3339(u)),
                        _ => "-".into(),
                    }
                )
            });
        }
        QueueCmd::Retry { id: None } => {
            let n = admin::queue_retry(&store).await?;
            p.emit(json!({"due": n}), || {
                format!("{n} message(s) due now; a running cmtpd picks them up within a second")
            });
        }
        QueueCmd::Retry { id: Some(id) } => {
            admin::queue_retry_one(&store, *id).await?;
            p.emit(json!({"id": id, "action": "retry"}), || {
                format!("queue entry {id} is due now")
            });
        }
        QueueCmd::Delete { id } => {
            let e = admin::queue_entry(&store, *id).await?;
            admin::queue_delete(&store, *id).await?;
            p.emit(
                json!({"id": id, "action": "delete", "hash": hex_hash(&e.hash)}),
                || {
                    format!(
                        "deleted queue entry {id} ({}@{} to {}, {}); the sender is not notified",
                        e.sender,
                        cfg.domain,
                        clean(&e.destination),
                        size(e.size)
                    )
                },
            );
        }
        QueueCmd::Hold { id } => {
            admin::queue_hold(&store, *id, true).await?;
            p.emit(json!({"id": id, "action": "hold"}), || {
                format!("queue entry {id} is held: it is not attempted until `cmtpd queue release {id}` (an attempt already in progress finishes)")
            });
        }
        QueueCmd::Release { id } => {
            admin::queue_hold(&store, *id, false).await?;
            p.emit(json!({"id": id, "action": "release"}), || {
                format!("queue entry {id} is released")
            });
        }
    }
    Ok(())
}

/// `cmtpd key ...`.
pub(crate) fn key(p: &Printer, cfg: &Config, cmd: &KeyCmd) -> anyhow::Result<()> {
    let path = cfg.key_path();
    if !path.exists() {
        bail!(
            "the server key {} does not exist (`cmtpd init` creates it)",
            path.display()
        );
    }
    match cmd {
        KeyCmd::Show => {
            let key = cmtp_server::keyfile::load(&path)?;
            let fp = key.public().fingerprint_hex();
            let txt = format!(
                "_cmtpkey.{}. IN TXT \"v=cmtp1; k=ed25519; fp={fp}\"",
                cfg.domain
            );
            p.note(&txt);
            p.emit(
                json!({"fingerprint": fp, "key_file": path, "txt": txt}),
                || fp.clone(),
            );
        }
        KeyCmd::Rotate => {
            let (old, new) = cmtp_server::keyfile::rotate(&path, &cfg.domain(), now())?;
            p.note(&format!(
                "rotated the key of {d}: {} -> {}\n\
                 restart cmtpd (every node) to use it; while peers catch up, publish both fingerprints:\n  \
                 _cmtpkey.{d}. IN TXT \"v=cmtp1; k=ed25519; fp={}\"\n  \
                 _cmtpkey.{d}. IN TXT \"v=cmtp1; k=ed25519; fp={}\"",
                old.fingerprint_hex(),
                new.fingerprint_hex(),
                new.fingerprint_hex(),
                old.fingerprint_hex(),
                d = cfg.domain
            ));
            p.emit(
                json!({"old": old.fingerprint_hex(), "new": new.fingerprint_hex()}),
                || new.fingerprint_hex(),
            );
        }
    }
    Ok(())
}

/// `cmtpd config ...`: returns the exit code.
pub(crate) fn config(p: &Printer, cli: &Cli, cmd: &ConfigCmd) -> anyhow::Result<u8> {
    match cmd {
        ConfigCmd::Check => {
            let path = cli.config_path();
            let mut problems = Vec::new();
            let mut notes = Vec::new();
            match Config::load_unchecked(&path) {
                Err(e) => problems.push(format!("{e:#}")),
                Ok(mut cfg) => {
                    if cli.config.is_none() || cli.data_dir.is_some() {
                        cfg.data_dir = cli.data_dir();
                    }
                    problems.extend(cfg.problems());
                    if !cfg.data_dir.is_dir() {
                        notes.push(format!(
                            "the data directory {} does not exist yet (`cmtpd init` or the first `cmtpd run` creates it)",
                            cfg.data_dir.display()
                        ));
                    }
                    notes.extend(cfg.warnings());
                }
            }
            let ok = problems.is_empty();
            p.emit(
                json!({"file": path, "ok": ok, "problems": problems, "warnings": notes}),
                || {
                    let mut t = String::new();
                    for pr in &problems {
                        t.push_str(&format!("error: {pr}\n"));
                    }
                    for n in &notes {
                        t.push_str(&format!("warning: {n}\n"));
                    }
                    if ok {
                        t.push_str(&format!("{}: OK", path.display()));
                    } else {
                        t.push_str(&format!(
                            "{}: {} problem(s)",
                            path.display(),
                            problems.len()
                        ));
                    }
                    t
                },
            );
            Ok(if ok { 0 } else { 1 })
        }
        ConfigCmd::Show { defaults } => {
            let cfg = if *defaults {
                let mut d = Config::new("example.org", Path::new("."));
                d.data_dir = ".".into();
                d
            } else {
                resolve_config(cli, None, false)?
            };
            let flat = flatten(&cfg);
            p.emit(
                serde_json::to_value(&cfg).expect("configuration serialises"),
                || {
                    let mut t = String::new();
                    if *defaults {
                        t.push_str("# built-in defaults (domain has none: it is required)\n");
                    } else {
                        t.push_str("# the configuration in effect; (restart) = a reload does not change it\n");
                    }
                    for (k, v) in &flat {
                        let restart = if reloadable(k) { "" } else { "   # (restart)" };
                        t.push_str(&format!("{k} = {v}{restart}\n"));
                    }
                    t
                },
            );
            Ok(0)
        }
    }
}

/// `cmtpd reload`: returns the exit code.
pub(crate) fn reload(p: &Printer, cfg: &Config) -> anyhow::Result<u8> {
    // resolve_config has checked the file already: a broken file is
    // reported here, before anything is signalled.
    let status = cmtp_server::reload::signal_reload(cfg, std::time::Duration::from_secs(10))?;
    p.emit(serde_json::to_value(&status).expect("serialises"), || {
        if status.ok {
            let mut t = format!(
                "cmtpd (pid {}) reloaded its configuration: {}",
                status.pid,
                if status.applied.is_empty() {
                    "nothing changed".into()
                } else {
                    format!("changed {}", status.applied.join(", "))
                }
            );
            if !status.need_restart.is_empty() {
                t.push_str(&format!(
                    "\nneeds a restart (running values kept): {}",
                    status.need_restart.join(", ")
                ));
            }
            t
        } else {
            format!(
                "cmtpd (pid {}) kept its configuration: {}",
                status.pid,
                status.error.as_deref().unwrap_or("reload failed")
            )
        }
    });
    Ok(if status.ok { 0 } else { 1 })
}

/// `cmtpd backup FILE`.
pub(crate) async fn backup(p: &Printer, cfg: &Config, file: &Path) -> anyhow::Result<()> {
    let r = admin::backup(cfg, file).await?;
    let s = r.summary;
    p.emit(
        json!({"file": r.file, "users": s.users, "messages": s.messages, "queued": s.queued,
               "bytes": s.bytes, "fingerprint": r.fingerprint}),
        || {
            format!(
                "wrote {} ({}): {} account(s), {} message(s), {} queued; server key {}\n\
                 It holds the server key and the login secrets: keep it as safe as the server.",
                r.file.display(),
                size(s.bytes),
                s.users,
                s.messages,
                s.queued,
                r.fingerprint
            )
        },
    );
    Ok(())
}

/// `cmtpd restore FILE`.
pub(crate) async fn restore(
    p: &Printer,
    cfg: &Config,
    file: &Path,
    config_path: &Path,
) -> anyhow::Result<()> {
    let r = admin::restore(cfg, file, config_path).await?;
    let s = r.summary;
    p.emit(
        json!({"data_dir": cfg.data_dir, "users": s.users, "messages": s.messages,
               "queued": s.queued, "fingerprint": r.fingerprint, "config_written": r.wrote_config}),
        || {
            format!(
                "restored into {}: {} account(s), {} message(s), {} queued; server key {}{}",
                cfg.data_dir.display(),
                s.users,
                s.messages,
                s.queued,
                r.fingerprint,
                r.wrote_config
                    .as_ref()
                    .map_or(String::new(), |c| format!("\nwrote {}", c.display()))
            )
        },
    );
    Ok(())
}

fn prompt_new_password() -> anyhow::Result<zeroize::Zeroizing<String>> {
    let a = zeroize::Zeroizing::new(rpassword::prompt_password("New password: ")?);
    let b = zeroize::Zeroizing::new(rpassword::prompt_password("Repeat it: ")?);
    if *a != *b {
        bail!("the passwords differ");
    }
    Ok(a)
}

fn confirm(question: &str, expected: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == expected)
}
