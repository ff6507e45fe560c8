//! Passwords (from a prompt or a file) and the first-run wizard.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, bail};
use cmtp_app::session::Client;
use cmtp_proto::names::Address;
use zeroize::Zeroizing;

use crate::commands::UsageError;
use crate::output::Printer;

/// The first line of `path`, without its line ending; must not be empty.
fn from_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the password file {}", path.display()))?,
    );
    let line = Zeroizing::new(
        text.split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches('\r')
            .to_owned(),
    );
    if line.is_empty() {
        bail!(UsageError(format!(
            "the password file {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

fn no_terminal() -> anyhow::Error {
    UsageError("no terminal to ask for the password on: give --password-file FILE".into()).into()
}

/// The password: from `file`, else asked once.
pub(crate) fn password(file: Option<&Path>, prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        return from_file(f);
    }
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        return Err(no_terminal());
    }
    let p = Zeroizing::new(rpassword::prompt_password(prompt).map_err(|_| no_terminal())?);
    if p.is_empty() {
        bail!(UsageError("an empty password is not allowed".into()));
    }
    Ok(p)
}

/// A new password: from `file`, else asked twice.
pub(crate) fn new_password(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        return from_file(f);
    }
    let a = password(None, "New password: ")?;
    let b = password(None, "Repeat it: ")?;
    if *a != *b {
        bail!(UsageError("the passwords differ".into()));
    }
    Ok(a)
}

/// Asks on the terminal whether to register (with an invite) or log in, and
/// does it.
pub(crate) async fn wizard(client: &mut Client, out: &Printer) -> anyhow::Result<()> {
    use dialoguer::{Input, Password, Select};
    eprintln!(
        "cmtp is not set up yet (home: {}).",
        client.home().root().display()
    );
    let choice = Select::new()
        .with_prompt("What would you like to do?")
        .items([
            "Register a new account with an invite token",
            "Log in to an existing account",
        ])
        .default(0)
        .interact()
        .context("reading your choice")?;
    let address: String = Input::new()
        .with_prompt("Your address (you@your.domain)")
        .validate_with(|s: &String| Address::parse(s).map(|_| ()).map_err(|e| e.to_string()))
        .interact_text()
        .context("reading the address")?;
    let address = Address::parse(&address).expect("validated");
    let invite: String = if choice == 0 {
        Input::new()
            .with_prompt("Invite token")
            .interact_text()
            .context("reading the invite")?
    } else {
        String::new()
    };
    let server: String = Input::new()
        .with_prompt("Server host:port (empty: find it through DNS)")
        .allow_empty(true)
        .interact_text()
        .context("reading the server")?;
    if !server.trim().is_empty() {
        client.set_server(server.trim());
    }
    let password = if choice == 0 {
        Password::new()
            .with_prompt("New password")
            .with_confirmation("Repeat it", "the passwords differ")
            .interact()
    } else {
        Password::new().with_prompt("Password").interact()
    }
    .map(Zeroizing::new)
    .context("reading the password")?;
    let account = if choice == 0 {
        client
            .register(&address, invite.trim(), password.as_bytes())
            .await?
    } else {
        client.login(&address, password.as_bytes()).await?
    };
    out.account(
        if choice == 0 {
            "registered"
        } else {
            "logged in as"
        },
        client,
        &account,
    );
    Ok(())
}
