//! One function per command; the logic lives in `cmtp_client`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context;
use cmtp_client::home::Home;
use cmtp_client::mailbox::{Mailbox, Verdict, save_attachments};
use cmtp_client::send::{Draft, Progress, send};
use cmtp_client::session::{Client, Options};
use cmtp_proto::content::Attachment;
use cmtp_proto::names::Address;
use serde_json::json;

use crate::output::{Printer, sanitize};
use crate::prompt;
use crate::{Cli, Cmd, Output, exit};

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
        None if client.is_configured() => Cmd::Inbox,
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
        } => cmd_send(&client, &out, to, cc, subject, attach, plaintext).await,
        Cmd::Inbox => cmd_inbox(&client, &out).await,
        Cmd::Read {
            id,
            save_attachments,
        } => cmd_read(&client, &out, id, save_attachments).await,
        Cmd::Delete { id } => {
            let mut session = client.session().await?;
            let mut mailbox = Mailbox::open(client.home().cache_dir().join("messages"))?;
            mailbox.delete(&mut session, id).await?;
            session.close().await;
            match out.format {
                Output::Json => out.json(&json!({ "deleted": id })),
                Output::Text => println!("deleted message {id}"),
            }
            Ok(exit::OK)
        }
        Cmd::Key { address } => {
            let address = parse_address(&address, "address")?;
            let own = client.address()?;
            let mut session = client.connect(&own.domain).await?;
            let key = session.user_key(&address, true).await?;
            session.close().await;
            out.key(&address, &key);
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

async fn cmd_send(
    client: &Client,
    out: &Printer,
    to: Vec<String>,
    cc: Vec<String>,
    subject: String,
    attach: Vec<PathBuf>,
    plaintext: bool,
) -> anyhow::Result<u8> {
    let to = to
        .iter()
        .map(|a| parse_address(a, "--to"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cc = cc
        .iter()
        .map(|a| parse_address(a, "--cc"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if subject.len() > 255 {
        return Err(usage("the subject is longer than 255 bytes"));
    }
    let mut attachments = Vec::with_capacity(attach.len());
    for path in &attach {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("attachment")
            .to_owned();
        attachments.push(Attachment { name, data });
    }
    let text = if std::io::stdin().is_terminal() {
        match dialoguer::Editor::new()
            .extension(".txt")
            .edit("")
            .context("running $EDITOR")?
        {
            Some(t) if !t.trim().is_empty() => t,
            _ => return Err(usage("empty message; nothing sent")),
        }
    } else {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .context("reading the message text from stdin (it must be UTF-8)")?;
        t
    };
    let draft = Draft {
        to,
        cc,
        subject,
        text,
        attachments,
        plaintext,
    };
    let mut session = client.session().await?;
    // A progress bar for large messages; indicatif draws nothing off a terminal.
    let mut bar: Option<indicatif::ProgressBar> = None;
    let outcome = send(&mut session, &draft, |p: Progress| {
        if p.len < 1 << 20 {
            return;
        }
        let bar = bar.get_or_insert_with(|| {
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
    })
    .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    session.close().await;
    let mut outcome = outcome?;
    out.sent(&outcome);
    match outcome.failed.drain(..).next() {
        None => Ok(exit::OK),
        Some((recipient, e)) => {
            Err(anyhow::Error::new(e).context(format!("not delivered to {recipient}")))
        }
    }
}

async fn cmd_inbox(client: &Client, out: &Printer) -> anyhow::Result<u8> {
    let mut session = client.session().await?;
    let mut mailbox = Mailbox::open(client.home().cache_dir().join("messages"))?;
    let messages = mailbox.inbox(&mut session).await?;
    session.close().await;
    out.inbox(&messages);
    Ok(exit::OK)
}

async fn cmd_read(
    client: &Client,
    out: &Printer,
    id: u64,
    save: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let mut session = client.session().await?;
    let mut mailbox = Mailbox::open(client.home().cache_dir().join("messages"))?;
    let m = mailbox.inspect(&mut session, id).await?;
    session.close().await;
    let content = match (&m.verdict, &m.content) {
        (Verdict::Undecryptable(_), _) | (_, None) => {
            let detail = m.verdict.detail().unwrap_or("cannot be opened").to_owned();
            return Err(cmtp_client::Error::Undecryptable { id, detail }.into());
        }
        (_, Some(c)) => c,
    };
    let saved = match &save {
        Some(dir) => save_attachments(dir, &content.attachments)?,
        None => Vec::new(),
    };
    out.message(&m, content, &saved);
    if let Verdict::NotVerified(why) = &m.verdict {
        if out.format == Output::Text {
            eprintln!();
            eprintln!(
                "!!! WARNING: the sender of message {id} is NOT VERIFIED: {}",
                sanitize(why)
            );
            eprintln!("!!! Anyone could have written it; do not trust who it claims to be from.");
        }
        return Err(cmtp_client::Error::Verification(format!(
            "the sender of message {id} is NOT VERIFIED: {why}"
        ))
        .into());
    }
    Ok(exit::OK)
}
