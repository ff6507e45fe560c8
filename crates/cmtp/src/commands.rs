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
use crate::{
    Cli, Cmd, CommandFactory, ContactCmd, ContactsCmd, DraftCmd, KeyCmd, OutboxCmd, Output, Shell,
    WriteOpts, exit,
};

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
    // What needs no home at all.
    match &cli.command {
        Some(Cmd::Completions { shell }) => {
            let mut cmd = crate::Cli::command();
            let mut buf = Vec::new();
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "cmtp", &mut buf);
            out!("{}", String::from_utf8_lossy(&buf));
            return Ok(exit::OK);
        }
        Some(Cmd::Man { dir }) => {
            let written = write_man_pages(dir)?;
            match cli.output {
                Output::Json => Printer::new(cli.output).json(&json!({ "written": written })),
                Output::Text => {
                    for p in &written {
                        outln!("{}", p.display());
                    }
                }
            }
            return Ok(exit::OK);
        }
        _ => {}
    }
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
            flat: false,
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
            errln!(
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
            errln!(
                "cmtp: a reset gives {address} a new password AND a new identity key. Mail sealed \
                 to the old key stays readable only on a device that still holds the old key: \
                 end-to-end encryption has no back door."
            );
            let password = prompt::new_password(password_file.as_deref())?;
            let old = client.home().load_identity().ok().flatten();
            let account = client.reset(&address, &token, password.as_bytes()).await?;
            if let Some(old) = old.filter(|k| k.public() != account.statement.key) {
                errln!(
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
            recipients,
            mut to,
            cc,
            bcc,
            subject,
            opts,
        } => {
            to.splice(0..0, recipients);
            if to.is_empty() && cc.is_empty() && bcc.is_empty() {
                return Err(usage(
                    "no recipient: `cmtp send bob@b.example` (or --to, --cc, --bcc)",
                ));
            }
            let composed = Composed {
                to,
                cc,
                bcc,
                subject,
                ..Composed::default()
            };
            compose_and_send(&client, &out, composed, &opts, false).await
        }
        Cmd::Reply {
            id,
            all,
            no_quote,
            opts,
        } => cmd_reply(&client, &out, id, all, no_quote, &opts).await,
        Cmd::ReplyAll { id, no_quote, opts } => {
            cmd_reply(&client, &out, id, true, no_quote, &opts).await
        }
        Cmd::Forward {
            id,
            recipients,
            mut to,
            cc,
            bcc,
            opts,
        } => {
            to.splice(0..0, recipients);
            if to.is_empty() && cc.is_empty() && bcc.is_empty() {
                return Err(usage(
                    "no recipient: `cmtp forward ID bob@b.example` (or --to, --cc, --bcc)",
                ));
            }
            let store = open_store(&client)?;
            let m = fetched_message(&store, id)?;
            let mut composed = cmtp_app::compose::forward(&m, &store.parts(id)?)
                .map_err(|e| usage(e.to_string()))?;
            composed.to = to;
            composed.cc = cc;
            composed.bcc = bcc;
            drop(store);
            compose_and_send(&client, &out, composed, &opts, true).await
        }
        Cmd::Contact { action } => {
            let home = client.home().root().to_owned();
            match action {
                ContactCmd::AllowSmtp { address } => {
                    let a = parse_address(&address, "address")?;
                    cmtp_app::smtp::set_contact(&home, &a, true)?;
                    outln!(
                        "{a} may get mail by SMTP (NOT end-to-end encrypted) when its domain has no CMTP service"
                    );
                }
                ContactCmd::DenySmtp { address } => {
                    let a = parse_address(&address, "address")?;
                    cmtp_app::smtp::set_contact(&home, &a, false)?;
                    outln!("{a} gets end-to-end encrypted mail only");
                }
                ContactCmd::List => {
                    let list = cmtp_app::smtp::allowed_contacts(&home)?;
                    match out.format {
                        Output::Json => out.json(&json!({"smtp_allowed": list})),
                        Output::Text => {
                            for a in list {
                                outln!("{a}\tSMTP allowed");
                            }
                        }
                    }
                }
            }
            Ok(exit::OK)
        }
        Cmd::Inbox {
            folder,
            limit,
            page,
            offline,
            flat,
        } => cmd_inbox(&client, &out, &folder, limit, page, offline, flat).await,
        Cmd::Search { query, limit, sync } => {
            let mut store = open_store(&client)?;
            if sync && let Some((session, _)) = sync_online(&client, &mut store, false).await? {
                session.close().await;
            }
            let q = cmtp_app::search::Query::parse(&query.join(" "))
                .map_err(|e| usage(e.to_string()))?;
            let found = store.search(&q, limit)?;
            out.search(&found);
            Ok(exit::OK)
        }
        Cmd::Move { id, folder } => cmd_move(&client, &out, id, &folder).await,
        Cmd::Archive { id } => cmd_move(&client, &out, id, "Archive").await,
        Cmd::Folders => {
            let mut store = open_store(&client)?;
            if let Some((session, _)) = sync_online(&client, &mut store, false).await? {
                session.close().await;
            }
            out.folders(&store.folders()?);
            Ok(exit::OK)
        }
        Cmd::Contacts { action } => cmd_contacts(&client, &out, action).await,
        Cmd::Verify { address, yes } => cmd_verify(&client, &out, &address, yes).await,
        Cmd::Export {
            mbox,
            maildir,
            folder,
        } => {
            let mut store = open_store(&client)?;
            if let Some((session, _)) = sync_online(&client, &mut store, false).await? {
                session.close().await;
            }
            let (report, target) = match (mbox, maildir) {
                (Some(f), _) => (cmtp_app::export::mbox(&store, folder.as_deref(), &f)?, f),
                (None, Some(d)) => (cmtp_app::export::maildir(&store, folder.as_deref(), &d)?, d),
                (None, None) => return Err(usage("give --mbox FILE or --maildir DIR")),
            };
            out.exported(&report, &target);
            Ok(exit::OK)
        }
        Cmd::Completions { .. } | Cmd::Man { .. } => unreachable!("handled above"),
        Cmd::Read {
            id,
            save_attachments,
        } => cmd_read(&client, &out, id, save_attachments).await,
        Cmd::Thread { id } => {
            let store = open_store(&client)?;
            if store.message(id)?.is_none() {
                return Err(cmtp_app::Error::NotFound(format!(
                    "no message {id} in the local store (run `cmtp inbox` to sync)"
                ))
                .into());
            }
            let thread = store.thread(id)?;
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
        Cmd::Delete { id, permanently } => {
            let mut store = open_store(&client)?;
            let local = store.message(id)?;
            if local.is_none()
                && let Some((session, _)) = sync_online(&client, &mut store, true).await?
            {
                session.close().await;
            }
            let in_trash = store.message(id)?.is_some_and(|m| m.folder == "Trash");
            if permanently || in_trash {
                let mut session = client.session().await?;
                session.delete(id).await?;
                store.remove(id)?;
                session.close().await;
                match out.format {
                    Output::Json => {
                        out.json(&json!({ "deleted": id, "folder": null, "permanently": true }))
                    }
                    Output::Text => outln!("deleted message {id} for good"),
                }
            } else {
                if !store.set_folder(id, "Trash")? {
                    return Err(cmtp_app::Error::NotFound(format!(
                        "no message {id} in the mailbox"
                    ))
                    .into());
                }
                push_changes_soon(&client, &mut store).await;
                match out.format {
                    Output::Json => {
                        out.json(&json!({ "deleted": id, "folder": "Trash", "permanently": false }))
                    }
                    Output::Text => outln!(
                        "moved message {id} to Trash; `cmtp delete {id}` again removes it for good"
                    ),
                }
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
        Cmd::Passwd {
            password_file,
            current_password_file,
        } => {
            if current_password_file.is_none()
                && !(std::io::stdin().is_terminal() || std::io::stderr().is_terminal())
            {
                return Err(usage(
                    "changing the password needs the current one: give --current-password-file FILE \
                     (there is no terminal to ask on)",
                ));
            }
            let current = prompt::password(current_password_file.as_deref(), "Current password: ")?;
            let mut session = client.password_session(current.as_bytes()).await?;
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
                Output::Text => outln!(
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
        let media_type = cmtp_app::compose::guess_media_type(&name).to_owned();
        attachments.push(StoredAttachment {
            name,
            media_type,
            data,
        });
    }
    Ok(attachments)
}

/// Recipient lists with aliases replaced by the contacts' `Name <addr>`
/// (usage errors for what is neither an address nor an alias).
fn resolve(store: &LocalStore, lists: &[String]) -> anyhow::Result<Vec<String>> {
    let list = cmtp_app::address::parse_list(lists, |alias| {
        Ok(store.contact_by_alias(alias)?.and_then(|c| {
            Address::parse(&c.address)
                .ok()
                .map(|a| cmtp_proto::content::Mailbox::new(c.name, a))
        }))
    })
    .map_err(|e| match e {
        cmtp_app::Error::Invalid(m) => usage(m),
        e => e.into(),
    })?;
    Ok(list.iter().map(|m| m.to_string()).collect())
}

fn resolve_all(store: &LocalStore, c: &mut Composed) -> anyhow::Result<()> {
    c.to = resolve(store, &c.to)?;
    c.cc = resolve(store, &c.cc)?;
    c.bcc = resolve(store, &c.bcc)?;
    Ok(())
}

/// A message of the local store that was fetched (synced first if needed).
async fn fetched(
    client: &Client,
    store: &mut LocalStore,
    id: u64,
) -> anyhow::Result<cmtp_app::store::StoredMessage> {
    if store.message(id)?.is_none_or(|m| m.verdict.is_none())
        && let Some((session, _)) = sync_online(client, store, true).await?
    {
        session.close().await;
    }
    fetched_message(store, id)
}

fn fetched_message(store: &LocalStore, id: u64) -> anyhow::Result<cmtp_app::store::StoredMessage> {
    store
        .message(id)?
        .filter(|m| m.verdict.is_some())
        .ok_or_else(|| cmtp_app::Error::NotFound(format!("no message {id} in the mailbox")).into())
}

/// Writes a message (`c` is what is known already: recipients, subject,
/// quoted text, forwarded attachments) in $EDITOR on a terminal or from
/// stdin (put before the quoted text), then sends it through the outbox.
async fn compose_and_send(
    client: &Client,
    out: &Printer,
    mut c: Composed,
    opts: &WriteOpts,
    keep_attachments: bool,
) -> anyhow::Result<u8> {
    if !keep_attachments {
        c.attachments.clear();
    }
    c.attachments.extend(read_attachments(&opts.attach)?);
    c.plaintext = opts.plaintext;
    c.from_name = client.config().name.clone().unwrap_or_default();
    let mut store = open_store(client)?;
    resolve_all(&store, &mut c)?;
    if std::io::stdin().is_terminal() {
        match edit(&c)? {
            Edited::Empty => return Err(usage("empty message; nothing sent")),
            Edited::Ok(e) => c = e,
            Edited::Unreadable(text, e) => {
                c.text = text;
                let id = store.save_draft(None, &c, Some(&e.to_string()), now())?;
                return Err(anyhow::Error::new(e).context(format!(
                    "nothing sent; what you wrote is kept as draft {id} (`cmtp draft edit {id}`)"
                )));
            }
        }
        resolve_all(&store, &mut c)?;
    } else {
        let mut typed = String::new();
        std::io::stdin()
            .read_to_string(&mut typed)
            .context("reading the message text from stdin (it must be UTF-8)")?;
        c.text = format!("{typed}{}", c.text);
    }
    // Consent to SMTP for the recipients as finally written (§19.3).
    let copies = [c.cc.clone(), c.bcc.clone()].concat();
    c.smtp_allowed =
        cmtp_app::smtp::consented(client.home().root(), opts.allow_smtp, &c.to, &copies)?;
    cmtp_app::send::validate(&c)?;
    let id = store.outbox_add(&c, now())?;
    send_entry(client, out, &mut store, id, opts.retry_for).await
}

async fn cmd_reply(
    client: &Client,
    out: &Printer,
    id: u64,
    all: bool,
    no_quote: bool,
    opts: &WriteOpts,
) -> anyhow::Result<u8> {
    let mut store = open_store(client)?;
    let m = fetched(client, &mut store, id).await?;
    let me = client.address()?;
    let mut c = cmtp_app::compose::reply(&m, &me, all).map_err(|e| usage(e.to_string()))?;
    if no_quote {
        c.text.clear();
    }
    drop(store);
    compose_and_send(client, out, c, opts, false).await
}

async fn cmd_move(client: &Client, out: &Printer, id: u64, folder: &str) -> anyhow::Result<u8> {
    let folder = cmtp_proto::payload::mailbox::Folder::parse(folder)
        .map_err(|e| usage(format!("{folder:?} is not a folder name: {e}")))?;
    let mut store = open_store(client)?;
    if store.message(id)?.is_none()
        && let Some((session, _)) = sync_online(client, &mut store, true).await?
    {
        session.close().await;
    }
    if !store.set_folder(id, folder.as_str())? {
        return Err(cmtp_app::Error::NotFound(format!("no message {id} in the mailbox")).into());
    }
    push_changes_soon(client, &mut store).await;
    match out.format {
        Output::Json => out.json(&json!({ "moved": id, "folder": folder.as_str() })),
        Output::Text => outln!("moved message {id} to {}", folder.as_str()),
    }
    Ok(exit::OK)
}

/// Pushes flag changes and moves made here, if the server can be reached
/// at once (else at the next sync).
async fn push_changes_soon(client: &Client, store: &mut LocalStore) {
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
        let _ = cmtp_app::sync::push_moves(&mut session, store).await;
        session.close().await;
    }
}

/// The address of `s`: an address, `Name <addr>`, or a contact's alias.
fn contact_address(store: &LocalStore, s: &str) -> anyhow::Result<Address> {
    let list = resolve(store, &[s.to_owned()])?;
    let m = cmtp_app::address::parse_resolved(&list)?;
    match m.as_slice() {
        [one] => Ok(one.address.clone()),
        _ => Err(usage(format!("{s:?} is not one address"))),
    }
}

async fn cmd_contacts(
    client: &Client,
    out: &Printer,
    action: Option<ContactsCmd>,
) -> anyhow::Result<u8> {
    let store = open_store(client)?;
    match action.unwrap_or(ContactsCmd::List) {
        ContactsCmd::List => {
            let me = client.address()?;
            let key = client.identity()?.public();
            out.contacts(&store.contacts()?, &me, &key);
        }
        ContactsCmd::Add {
            address,
            alias,
            name,
        } => {
            let parsed = cmtp_app::address::parse_resolved(std::slice::from_ref(&address))
                .map_err(|e| usage(e.to_string()))?;
            let [m] = parsed.as_slice() else {
                return Err(usage(format!("{address:?} is not one address")));
            };
            let name = name.or_else(|| (!m.name.is_empty()).then(|| m.name.clone()));
            store
                .set_contact(&m.address, alias.as_deref(), name.as_deref(), now())
                .map_err(|e| match e {
                    cmtp_app::Error::Invalid(m) => usage(m),
                    e => e.into(),
                })?;
            let c = store.contact(&m.address)?.expect("just added");
            match out.format {
                Output::Json => out.json(&json!({
                    "address": c.address, "name": c.name, "alias": c.alias,
                })),
                Output::Text => outln!(
                    "contact {}{}",
                    c.address,
                    c.alias
                        .as_deref()
                        .map(|a| format!(" (alias {a})"))
                        .unwrap_or_default()
                ),
            }
        }
        ContactsCmd::Remove { address } => {
            let a = contact_address(&store, &address)?;
            if !store.remove_contact(&a)? {
                return Err(cmtp_app::Error::NotFound(format!("no contact {a}")).into());
            }
            match out.format {
                Output::Json => out.json(&json!({ "removed": a.to_string() })),
                Output::Text => outln!("removed contact {a}"),
            }
        }
    }
    Ok(exit::OK)
}

async fn cmd_verify(client: &Client, out: &Printer, who: &str, yes: bool) -> anyhow::Result<u8> {
    let store = open_store(client)?;
    let address = contact_address(&store, who)?;
    let me = client.address()?;
    let my_key = client.identity()?.public();
    let mut session = client.connect(&me.domain).await?;
    let key = session.user_key(&address, true).await?;
    session.close().await;
    let change = store.observe_key(&address, &key.key, now())?;
    let contact = store
        .contact(&address)?
        .expect("observe_key records the contact");
    let number = contact
        .safety_number(&me, &my_key)
        .expect("the contact has a key");
    out.safety_number(&contact, &number, change.as_ref());
    // Whether the key is proven in its domain's key directory, and
    // witnessed by how many domains (PROTOCOL.md §20).
    crate::kt_output::sender(out, client.home(), &address.to_string());
    let confirmed = if yes {
        true
    } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        dialoguer::Confirm::new()
            .with_prompt(format!(
                "Does {address} see the same 60 digits on their device?"
            ))
            .default(false)
            .interact()
            .context("reading your answer")?
    } else {
        errln!(
            "cmtp: {address} is not marked verified: compare the number with them, then run \
             `cmtp verify {address} --yes`"
        );
        return Ok(exit::OK);
    };
    if !confirmed {
        return Err(cmtp_app::Error::Verification(format!(
            "the safety numbers of {address} do not match: someone may be reading your mail with \
             {address}; do not trust this key"
        ))
        .into());
    }
    store.set_verified(&address, &key.key, now())?;
    match out.format {
        Output::Json => {}
        Output::Text => outln!("{address} is verified"),
    }
    Ok(exit::OK)
}

/// Writes `cmtp.1` and `cmtp-<command>.1` for every command into `dir`.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = crate::Cli::command();
    cmd.build();
    let mut written = Vec::new();
    let mut render = |page: clap::Command, name: String| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut buf)
            .context("rendering a man page")?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    render(cmd.clone(), "cmtp".into())?;
    for sub in cmd.get_subcommands() {
        let name = format!("cmtp-{}", sub.get_name());
        // clap names are 'static; this runs once per page.
        let page_name: &'static str = Box::leak(name.clone().into_boxed_str());
        render(sub.clone().name(page_name), name)?;
    }
    Ok(written)
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
                errln!("cmtp: {e}; trying again in {} s", wait.as_secs());
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
                errln!("cmtp: offline ({e}); showing what was synced before");
            }
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    // Messages that waited in the outbox go first.
    if !store.outbox()?.is_empty() {
        let flushed = cmtp_app::send::flush(&mut session, store, true, |_| {}).await?;
        for o in &flushed.sent {
            errln!(
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
            errln!("cmtp: the sync stopped ({e}); showing what was synced");
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
    flat: bool,
) -> anyhow::Result<u8> {
    let mut store = open_store(client)?;
    if !offline && let Some((session, _)) = sync_online(client, &mut store, false).await? {
        session.close().await;
    }
    out.key_change_warnings(&store.changed_keys()?);
    let offset = page.saturating_sub(1).saturating_mul(limit);
    let (total, unread) = store.count(folder)?;
    if flat || out.format == Output::Json {
        let messages = store.list(folder, offset, limit)?;
        out.inbox(&messages, total, unread);
    } else {
        let threads = store.threads(folder, offset, limit)?;
        out.threads(&threads, total, unread);
    }
    Ok(exit::OK)
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
    let attachments: Vec<Attachment> = store.parts(id)?;
    // Mail that arrived by SMTP: its MIME parts, plainly marked (§19.2).
    if let Some(v) = cmtp_app::smtp::view(&m, &attachments) {
        let saved = match &save {
            Some(dir) => save_attachments(dir, &v.attachments)?,
            None => Vec::new(),
        };
        out.smtp_message(&m, &v, &saved);
        if m.flags & SEEN == 0 {
            store.set_flags(id, SEEN, 0)?;
            push_changes_soon(client, &mut store).await;
        }
        return Ok(exit::OK);
    }
    if let Ok(a) = Address::parse(&m.source)
        && let Some(c) = store.contact(&a)?.filter(|c| c.key_changed())
    {
        out.key_change_warnings(&[c]);
    }
    let saved = match &save {
        Some(dir) => save_attachments(dir, &attachments)?,
        None => Vec::new(),
    };
    out.message(&m, &verdict, &attachments, &saved);
    crate::kt_output::sender(out, client.home(), &m.source);
    if m.flags & SEEN == 0 {
        store.set_flags(id, SEEN, 0)?;
        push_changes_soon(client, &mut store).await;
    }
    if let Verdict::NotVerified(why) = &verdict {
        if out.format == Output::Text {
            errln!();
            errln!(
                "!!! WARNING: the sender of message {id} is NOT VERIFIED: {}",
                sanitize(why)
            );
            errln!("!!! Anyone could have written it; do not trust who it claims to be from.");
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
                Output::Text => outln!("deleted draft {id}"),
            }
            Ok(exit::OK)
        }
        DraftCmd::Send { id, retry_for } => {
            let mut d = store
                .draft(id)?
                .ok_or_else(|| cmtp_app::Error::NotFound(format!("no draft {id}")))?;
            resolve_all(&store, &mut d.draft)?;
            if d.draft.from_name.is_empty() {
                d.draft.from_name = client.config().name.clone().unwrap_or_default();
            }
            let mut draft = d.draft.clone();
            let copies = [draft.cc.clone(), draft.bcc.clone()].concat();
            for a in cmtp_app::smtp::consented(client.home().root(), false, &draft.to, &copies)? {
                if !draft.smtp_allowed.contains(&a) {
                    draft.smtp_allowed.push(a);
                }
            }
            cmtp_app::send::validate(&draft)?;
            let entry = store.transaction(|s| {
                let entry = s.outbox_add(&draft, now())?;
                s.delete_draft(id)?;
                Ok(entry)
            })?;
            send_entry(client, out, &mut store, entry, retry_for).await
        }
    }
}
