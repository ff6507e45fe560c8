//! One function per command; the logic lives in `cmtp_app`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use cmtp_app::home::Home;
use cmtp_app::mailbox::{Verdict, save_attachments, stored_verdict};
use cmtp_app::send::{Outcome, Progress};
use cmtp_app::session::{Client, Options, Session};
use cmtp_app::store::{Composed, LocalStore, StoredAttachment};
use cmtp_app::sync::{SyncProgress, SyncReport};
use cmtp_proto::content::Attachment;
use cmtp_proto::names::Address;
use cmtp_proto::payload::mailbox::SEEN;
use serde_json::json;

use crate::output::{Printer, sanitize};
use crate::prompt;
use crate::{Cli, Cmd, DraftCmd, KeyCmd, OutboxCmd, Output, exit};

/// An error in how cmtp was called (exit code 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn parse_address(s: &str, what: &str) -> anyhow::Result<Address> {
    Address::parse(s).map_err(|e| usage(format!("{what} {s:?} is not a valid address: {e}")))
}

/// Runs the command line; returns the exit code on success paths that are
/// not plain success.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = match &cli.home {
        Some(h) => h.clone(),
        None => Home::default_dir().ok_or_else(|| {
            usage("cannot find a home directory for cmtp: give --home DIR or set CMTP_HOME")
        })?,
    };
    let options = Options {
        server: cli.server.clone(),
        min_ksf: cli.min_ksf,
        ..Options::default()
    };
    let mut client = Client::open(Home::at(home), options)?;
    let out = Printer::new(cli.output);
    let command = match cli.command {
        Some(c) => c,
        None if client.is_configured() => Cmd::Inbox {
            folder: "Inbox".into(),
            limit: 50,
            page: 1,
            offline: false,
        },
        None => Cmd::Setup,
    };
    let needs_account = !matches!(
        command,
        Cmd::Register { .. } | Cmd::Login { .. } | Cmd::Reset { .. } | Cmd::Setup
    );
    if needs_account && !client.is_configured() {
        if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            prompt::wizard(&mut client, &out).await?;
        } else {
            // The library's message says how to start.
            client.address()?;
            client.identity()?;
        }
    }
    // In a block of its own, so that the warnings below are printed after
    // a command that failed too (a refused login is when they matter most).
    let result: anyhow::Result<u8> = async {
    match command {
        Cmd::Setup if client.is_configured() => {
            eprintln!(
                "cmtp is set up as {} in {}; `cmtp login ADDRESS` switches accounts, --home DIR keeps several",
                client.address()?,
                client.home().root().display()
            );
            Ok(exit::OK)
        }
        Cmd::Setup => {
            if !std::io::stdin().is_terminal() {
                return Err(usage(format!(
                    "cmtp is not set up in {} and there is no terminal to ask questions on.\n\
                     Start with one of:\n  cmtp register you@your.domain --invite TOKEN [--server HOST:PORT] [--password-file FILE]\n  cmtp login you@your.domain [--server HOST:PORT] [--password-file FILE]",
                    client.home().root().display()
                )));
            }
            prompt::wizard(&mut client, &out).await?;
            Ok(exit::OK)
        }
        Cmd::Register {
            address,
            invite,
            password_file,
        } => {
            let address = parse_address(&address, "address")?;
            let password = prompt::new_password(password_file.as_deref())?;
            let account = client
                .register(&address, &invite, password.as_bytes())
                .await?;
            out.account("registered", &client, &account);
            Ok(exit::OK)
        }
        Cmd::Reset {
            address,
            token,
            password_file,
        } => {
            let address = parse_address(&address, "address")?;
            eprintln!(
                "cmtp: a reset gives {address} a new password AND a new identity key. Mail sealed \
                 to the old key stays readable only on a device that still holds the old key: \
                 end-to-end encryption has no back door."
            );
            let password = prompt::new_password(password_file.as_deref())?;
            let old = client.home().load_identity().ok().flatten();
            let account = client.reset(&address, &token, password.as_bytes()).await?;
            if let Some(old) = old.filter(|k| k.public() != account.statement.key) {
                eprintln!(
                    "cmtp: the old identity key is kept in {}",
                    client
                        .home()
                        .old_identity_path(&old.public().fingerprint_hex())
                        .display()
                );
            }
            out.account("reset", &client, &account);
            Ok(exit::OK)
        }
        Cmd::Login {
            address,
            password_file,
        } => {
            let address = parse_address(&address, "address")?;
            let password = prompt::password(password_file.as_deref(), "Password: ")?;
            let account = client.login(&address, password.as_bytes()).await?;
            out.account("logged in as", &client, &account);
            Ok(exit::OK)
        }
        Cmd::Send {
            to,
            cc,
            subject,
            attach,
            plaintext,
            retry_for,
        } => {
            let mut composed = Composed {
                to,
                cc,
                subject,
                text: String::new(),
                attachments: read_attachments(&attach)?,
                plaintext,
            };
            let mut store = open_store(&client)?;
            if std::io::stdin().is_terminal() {
                match edit(&composed)? {
                    Edited::Empty => return Err(usage("empty message; nothing sent")),
                    Edited::Ok(c) => composed = c,
                    Edited::Unreadable(text, e) => {
                        composed.text = text;
                        let id = store.save_draft(None, &composed, Some(&e.to_string()), now())?;
                        return Err(anyhow::Error::new(e).context(format!(
                            "nothing sent; what you wrote is kept as draft {id} (`cmtp draft edit {id}`)"
                        )));
                    }
                }
            } else {
                std::io::stdin()
                    .read_to_string(&mut composed.text)
                    .context("reading the message text from stdin (it must be UTF-8)")?;
            }
            cmtp_app::send::validate(&composed)?;
            let id = store.outbox_add(&composed, now())?;
            send_entry(&client, &out, &mut store, id, retry_for).await
        }
        Cmd::Inbox {
            folder,
            limit,
            page,
            offline,
        } => cmd_inbox(&client, &out, &folder, limit, page, offline).await,
        Cmd::Read {
            id,
            save_attachments,
        } => cmd_read(&client, &out, id, save_attachments).await,
        Cmd::Thread { id } => {
            let store = open_store(&client)?;
            let Some(m) = store.message(id)? else {
                return Err(cmtp_app::Error::NotFound(format!(
                    "no message {id} in the local store (run `cmtp inbox` to sync)"
                ))
                .into());
            };
            let thread = store.by_subject(m.subject.as_deref().unwrap_or(""))?;
            out.thread(&thread);
            Ok(exit::OK)
        }
        Cmd::Outbox { action } => match action.unwrap_or(OutboxCmd::List) {
            OutboxCmd::List => {
                let store = open_store(&client)?;
                out.outbox(&store.outbox()?, store.path());
                Ok(exit::OK)
            }
            OutboxCmd::Flush => {
                let mut store = open_store(&client)?;
                let mut session = client.session().await.map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "the outbox ({} messages) stays as it is",
                        store.outbox().map(|o| o.len()).unwrap_or(0)
                    ))
                })?;
                let mut bar = SendBar::default();
                let flushed =
                    cmtp_app::send::flush(&mut session, &mut store, false, |p| bar.update(p))
                        .await?;
                bar.finish();
                session.close().await;
                out.flushed(&flushed, store.path());
                if let Some((_, _, e)) = flushed.too_big.into_iter().next() {
                    return Err(e.into());
                }
                match flushed.kept.into_iter().next() {
                    Some((id, e)) => Err(anyhow::Error::new(e)
                        .context(format!("outbox entry {id} could not be sent; it stays"))),
                    None => Ok(exit::OK),
                }
            }
        },
        Cmd::Draft { action } => cmd_draft(&client, &out, action).await,
        Cmd::Delete { id } => {
            let mut session = client.session().await?;
            let store = open_store(&client)?;
            session.delete(id).await?;
            store.remove(id)?;
            session.close().await;
            match out.format {
                Output::Json => out.json(&json!({ "deleted": id })),
                Output::Text => println!("deleted message {id}"),
            }
            Ok(exit::OK)
        }
        Cmd::Key {
            action: Some(KeyCmd::History),
            ..
        } => {
            let mut session = client.session().await?;
            let report =
                cmtp_app::kt::self_check(&mut session, client.home(), now()).await?;
            session.close().await;
            crate::kt_output::history(&out, report.as_ref());
            Ok(exit::OK)
        }
        Cmd::Key { address, .. } => {
            let address = parse_address(&address.unwrap_or_default(), "address")?;
            let own = client.address()?;
            let mut session = client.connect(&own.domain).await?;
            let key = session.user_key(&address, true).await?;
            session.close().await;
            let kt = cmtp_app::kt::describe(client.home(), &address);
            crate::kt_output::key(&out, &address, &key, kt.as_ref());
            Ok(exit::OK)
        }
        Cmd::Passwd { password_file } => {
            let mut session = client.session().await?;
            let password = prompt::new_password(password_file.as_deref())?;
            client
                .change_password(&mut session, password.as_bytes())
                .await?;
            session.close().await;
            let address = client.address()?;
            match out.format {
                Output::Json => {
                    out.json(&json!({ "address": address.to_string(), "password_changed": true }))
                }
                Output::Text => println!(
                    "password changed for {address}; your key is unchanged and the old password no longer works"
                ),
            }
            Ok(exit::OK)
        }
    }
    }
    .await;
    // The self-check of every login (key transparency) warns until the history is clean.
    crate::kt_output::alarms(client.home());
    result
}

fn now() -> u64 {
    cmtp_client::clock::now()
}

/// The local store of the configured account.
fn open_store(client: &Client) -> anyhow::Result<LocalStore> {
    let address = client.address()?;
    Ok(LocalStore::open(
        &client.home().store_path(),
        &address.to_string(),
    )?)
}

fn read_attachments(paths: &[PathBuf]) -> anyhow::Result<Vec<StoredAttachment>> {
    let mut attachments = Vec::with_capacity(paths.len());
    for path in paths {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("attachment")
            .to_owned();
        attachments.push(StoredAttachment { name, data });
    }
    Ok(attachments)
}

enum Edited {
    Ok(Composed),
    Empty,
    /// The text could not be read back (a bad header line): the raw text.
    Unreadable(String, cmtp_app::Error),
}

/// Opens $EDITOR on the header template of `c`.
fn edit(c: &Composed) -> anyhow::Result<Edited> {
    let text = match dialoguer::Editor::new()
        .extension(".txt")
        .require_save(false)
        .trim_newlines(false)
        .edit(&cmtp_app::compose::template(c))
        .context("running $EDITOR")?
    {
        Some(t) => t,
        None => return Ok(Edited::Empty),
    };
    match cmtp_app::compose::parse(&text, c) {
        Ok(parsed) if parsed.text.trim().is_empty() && parsed.to.is_empty() => Ok(Edited::Empty),
        Ok(parsed) => Ok(Edited::Ok(parsed)),
        Err(e) => Ok(Edited::Unreadable(text, e)),
    }
}

/// A progress bar for large transfers; indicatif draws nothing off a terminal.
#[derive(Default)]
struct SendBar(Option<indicatif::ProgressBar>);

impl SendBar {
    fn update(&mut self, p: Progress) {
        if p.len < 1 << 20 {
            return;
        }
        let bar = self.0.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(p.len * p.copies as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        });
        if p.sent == 0 {
            bar.set_message(format!("copy {}/{}", p.copy + 1, p.copies));
        }
        bar.set_position(p.len * p.copy as u64 + p.sent);
    }

    fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

/// Sends outbox entry `id`, retrying with backoff for `retry_for` seconds
/// while the failure is temporary; then it stays in the outbox.
async fn send_entry(
    client: &Client,
    out: &Printer,
    store: &mut LocalStore,
    id: u64,
    retry_for: u64,
) -> anyhow::Result<u8> {
    let deadline = Instant::now() + Duration::from_secs(retry_for);
    let mut wait = Duration::from_secs(1);
    let last = loop {
        let attempt: Result<Outcome, cmtp_app::Error> = async {
            let mut session = client.session().await?;
            let mut bar = SendBar::default();
            let r = cmtp_app::send::deliver(&mut session, store, id, |p| bar.update(p)).await;
            bar.finish();
            if r.is_ok() {
                // Older messages that waited go along now.
                let _ = cmtp_app::send::flush(&mut session, store, true, |_| {}).await;
            }
            session.close().await;
            r
        }
        .await;
        match attempt {
            Ok(outcome) => {
                out.sent(&outcome);
                return match outcome.failed.into_iter().next() {
                    None => Ok(exit::OK),
                    Some((recipient, e)) => Err(anyhow::Error::new(e).context(format!(
                        "not delivered to {recipient}; the message is kept as draft {}",
                        outcome.kept_as_draft.unwrap_or(0)
                    ))),
                };
            }
            Err(e @ cmtp_app::Error::TooBig { .. }) => {
                let draft = cmtp_app::send::keep_as_draft(store, id, &e)?;
                return Err(anyhow::Error::new(e).context(format!(
                    "nothing was sent; the message is kept as draft {draft} (`cmtp draft edit {draft}`)"
                )));
            }
            Err(e) if e.is_transient() => {
                cmtp_app::send::record_failure(store, id, &e)?;
                if Instant::now() + wait > deadline {
                    break e;
                }
                eprintln!("cmtp: {e}; trying again in {} s", wait.as_secs());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                let draft = cmtp_app::send::keep_as_draft(store, id, &e)?;
                return Err(anyhow::Error::new(e).context(format!(
                    "nothing was sent; the message is kept as draft {draft} (`cmtp draft edit {draft}`)"
                )));
            }
        }
    };
    Err(anyhow::Error::new(last).context(format!(
        "the message is kept in the outbox (entry {id} in {}); `cmtp outbox flush` sends it, \
         and so does the next `cmtp send` or `cmtp inbox`",
        store.path().display()
    )))
}

/// Connects and syncs; `None` (with a warning) when the server cannot be
/// reached now and the store has something to show.
async fn sync_online(
    client: &Client,
    store: &mut LocalStore,
    quiet_offline: bool,
) -> anyhow::Result<Option<(Session, SyncReport)>> {
    let mut session = match client.session().await {
        Ok(s) => s,
        Err(e) if e.is_transient() && store.sync_state()?.epoch != 0 => {
            if !quiet_offline {
                eprintln!("cmtp: offline ({e}); showing what was synced before");
            }
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    // Messages that waited in the outbox go first.
    if !store.outbox()?.is_empty() {
        let flushed = cmtp_app::send::flush(&mut session, store, true, |_| {}).await?;
        for o in &flushed.sent {
            eprintln!(
                "cmtp: outbox entry {} sent to {} recipient(s)",
                o.outbox_id,
                o.delivered.len()
            );
        }
    }
    let mut bar: Option<indicatif::ProgressBar> = None;
    let report = cmtp_app::sync::sync(&mut session, store, |p| {
        let b = bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len}")
                    .expect("valid template"),
            );
            b
        });
        match p {
            SyncProgress::Listing(n) => {
                b.set_message("listing");
                b.set_position(n);
            }
            SyncProgress::Fetching { done, total } => {
                b.set_message("fetching");
                b.set_length(total);
                b.set_position(done);
            }
        }
    });
    let report = match report.await {
        Ok(r) => r,
        Err(e) if e.is_transient() => {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            eprintln!("cmtp: the sync stopped ({e}); showing what was synced");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(Some((session, report)))
}

async fn cmd_inbox(
    client: &Client,
    out: &Printer,
    folder: &str,
    limit: u64,
    page: u64,
    offline: bool,
) -> anyhow::Result<u8> {
    let mut store = open_store(client)?;
    if !offline && let Some((session, _)) = sync_online(client, &mut store, false).await? {
        session.close().await;
    }
    let offset = page.saturating_sub(1).saturating_mul(limit);
    let messages = store.list(folder, offset, limit)?;
    let (total, unread) = store.count(folder)?;
    out.inbox(&messages, total, unread);
    Ok(exit::OK)
}

/// Pushes flag changes made here, if the server can be reached at once.
async fn push_flags_soon(client: &Client, store: &LocalStore) {
    let quick = Client::open(
        client.home().clone(),
        client
            .options()
            .clone()
            .with_timeout(Duration::from_secs(3)),
    );
    let Ok(quick) = quick else { return };
    if let Ok(mut session) = quick.session().await {
        for (uid, set, clear) in store.pending_flags().unwrap_or_default() {
            if session.set_flags(&[uid], set, clear).await.is_ok() {
                let _ = store.clear_pending_flags(uid);
            }
        }
        session.close().await;
    }
}

async fn cmd_read(
    client: &Client,
    out: &Printer,
    id: u64,
    save: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let mut store = open_store(client)?;
    let fetched = |s: &LocalStore| -> anyhow::Result<bool> {
        Ok(s.message(id)?.is_some_and(|m| m.verdict.is_some()))
    };
    if !fetched(&store)? {
        match sync_online(client, &mut store, true).await? {
            Some((session, _)) => session.close().await,
            None => {
                // Offline, and this message was never fetched.
                client.session().await?;
            }
        }
    }
    let Some(m) = store.message(id)?.filter(|m| m.verdict.is_some()) else {
        return Err(cmtp_app::Error::NotFound(format!("no message {id} in the mailbox")).into());
    };
    let verdict = stored_verdict(&m);
    if let Verdict::Undecryptable(detail) = &verdict {
        return Err(cmtp_app::Error::Undecryptable {
            id,
            detail: detail.clone(),
        }
        .into());
    }
    let attachments: Vec<Attachment> = store
        .attachments(id)?
        .into_iter()
        .map(|(name, data)| Attachment { name, data })
        .collect();
    let saved = match &save {
        Some(dir) => save_attachments(dir, &attachments)?,
        None => Vec::new(),
    };
    out.message(&m, &verdict, &attachments, &saved);
    crate::kt_output::sender(out, client.home(), &m.source);
    if m.flags & SEEN == 0 {
        store.set_flags(id, SEEN, 0)?;
        push_flags_soon(client, &store).await;
    }
    if let Verdict::NotVerified(why) = &verdict {
        if out.format == Output::Text {
            eprintln!();
            eprintln!(
                "!!! WARNING: the sender of message {id} is NOT VERIFIED: {}",
                sanitize(why)
            );
            eprintln!("!!! Anyone could have written it; do not trust who it claims to be from.");
        }
        return Err(cmtp_app::Error::Verification(format!(
            "the sender of message {id} is NOT VERIFIED: {why}"
        ))
        .into());
    }
    Ok(exit::OK)
}

async fn cmd_draft(client: &Client, out: &Printer, action: DraftCmd) -> anyhow::Result<u8> {
    let mut store = open_store(client)?;
    match action {
        DraftCmd::New {
            to,
            cc,
            subject,
            attach,
        } => {
            let mut c = Composed {
                to,
                cc,
                subject,
                attachments: read_attachments(&attach)?,
                ..Composed::default()
            };
            let mut note = None;
            if std::io::stdin().is_terminal() {
                match edit(&c)? {
                    Edited::Empty => return Err(usage("empty draft; nothing saved")),
                    Edited::Ok(e) => c = e,
                    Edited::Unreadable(text, e) => {
                        c.text = text;
                        note = Some(e.to_string());
                    }
                }
            } else {
                std::io::stdin()
                    .read_to_string(&mut c.text)
                    .context("reading the draft's text from stdin (it must be UTF-8)")?;
            }
            let id = store.save_draft(None, &c, note.as_deref(), now())?;
            out.draft_saved(id);
            Ok(exit::OK)
        }
        DraftCmd::Edit { id } => {
            let d = store
                .draft(id)?
                .ok_or_else(|| cmtp_app::Error::NotFound(format!("no draft {id}")))?;
            let (c, note) = match edit(&d.draft)? {
                Edited::Empty => return Err(usage("the draft is empty now; it was not changed")),
                Edited::Ok(c) => (c, None),
                Edited::Unreadable(text, e) => (
                    Composed {
                        text,
                        ..d.draft.clone()
                    },
                    Some(e.to_string()),
                ),
            };
            store.save_draft(Some(id), &c, note.as_deref(), now())?;
            out.draft_saved(id);
            Ok(exit::OK)
        }
        DraftCmd::List => {
            out.drafts(&store.drafts()?);
            Ok(exit::OK)
        }
        DraftCmd::Delete { id } => {
            if !store.delete_draft(id)? {
                return Err(cmtp_app::Error::NotFound(format!("no draft {id}")).into());
            }
            match out.format {
                Output::Json => out.json(&json!({ "deleted_draft": id })),
                Output::Text => println!("deleted draft {id}"),
            }
            Ok(exit::OK)
        }
        DraftCmd::Send { id, retry_for } => {
            let d = store
                .draft(id)?
                .ok_or_else(|| cmtp_app::Error::NotFound(format!("no draft {id}")))?;
            cmtp_app::send::validate(&d.draft)?;
            let entry = store.transaction(|s| {
                let entry = s.outbox_add(&d.draft, now())?;
                s.delete_draft(id)?;
                Ok(entry)
            })?;
            send_entry(client, out, &mut store, entry, retry_for).await
        }
    }
}
