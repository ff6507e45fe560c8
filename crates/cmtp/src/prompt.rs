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

/// Which answer of the wizard a failure points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Address,
    Invite,
    Server,
    Password,
}

/// The answer to ask again after `e`, if the person can fix it by answering
/// differently.
fn wrong_answer(e: &cmtp_app::Error, registering: bool) -> Option<Answer> {
    use cmtp_app::failure::ErrorKind;
    match e {
        cmtp_app::Error::WrongPassword { .. } => Some(Answer::Password),
        _ => match e.kind() {
            // Too many attempts: answering again does not help now.
            ErrorKind::Auth if matches!(e, cmtp_app::Error::RateLimited { .. }) => None,
            ErrorKind::Auth if registering => Some(Answer::Invite),
            ErrorKind::Auth => Some(Answer::Password),
            ErrorKind::Unavailable => Some(Answer::Server),
            ErrorKind::Usage | ErrorKind::NotFound => Some(Answer::Address),
            _ => match e {
                cmtp_app::Error::Refused(m) if registering && m.contains("invite") => {
                    Some(Answer::Invite)
                }
                cmtp_app::Error::Refused(m) if m.contains("exists") => Some(Answer::Address),
                _ => None,
            },
        },
    }
}

/// How often the wizard asks again before it gives up.
const WIZARD_TRIES: usize = 5;

/// Asks on the terminal whether to register (with an invite) or log in, and
/// does it. A wrong answer (a mistyped address, a wrong invite token or
/// password, a server that cannot be reached) is asked again, keeping the
/// other answers, instead of ending the program.
pub(crate) async fn wizard(client: &mut Client, out: &Printer) -> anyhow::Result<()> {
    use dialoguer::{Input, Password, Select};
    errln!(
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
    let registering = choice == 0;
    let ask_address = || -> anyhow::Result<Address> {
        let a: String = Input::new()
            .with_prompt("Your address (you@your.domain)")
            .validate_with(|s: &String| Address::parse(s).map(|_| ()).map_err(|e| e.to_string()))
            .interact_text()
            .context("reading the address")?;
        Ok(Address::parse(&a).expect("validated"))
    };
    let ask_invite = || -> anyhow::Result<String> {
        let t: String = Input::new()
            .with_prompt("Invite token")
            .validate_with(|s: &String| {
                if s.trim().is_empty() {
                    Err("the token your administrator gave you (`cmtpd user invite NAME`)")
                } else {
                    Ok(())
                }
            })
            .interact_text()
            .context("reading the invite")?;
        Ok(t.trim().to_owned())
    };
    let ask_server = || -> anyhow::Result<String> {
        let s: String = Input::new()
            .with_prompt("Server host:port (empty: find it through DNS)")
            .allow_empty(true)
            .validate_with(|s: &String| {
                let s = s.trim();
                if s.is_empty()
                    || s.rsplit_once(':')
                        .is_none_or(|(_, p)| p.parse::<u16>().is_ok())
                {
                    Ok(())
                } else {
                    Err("host:port, e.g. mail.example.org:9001")
                }
            })
            .interact_text()
            .context("reading the server")?;
        Ok(s.trim().to_owned())
    };
    let ask_password = || -> anyhow::Result<Zeroizing<String>> {
        if registering {
            Password::new()
                .with_prompt("New password")
                .with_confirmation("Repeat it", "the passwords differ")
                .interact()
        } else {
            Password::new().with_prompt("Password").interact()
        }
        .map(Zeroizing::new)
        .context("reading the password")
    };
    let mut address = ask_address()?;
    let mut invite = if registering {
        ask_invite()?
    } else {
        String::new()
    };
    let mut server = ask_server()?;
    let mut password = ask_password()?;
    let mut tries = 0;
    let account = loop {
        if !server.is_empty() {
            client.set_server(&server);
        }
        let attempt = if registering {
            client
                .register(&address, &invite, password.as_bytes())
                .await
        } else {
            client.login(&address, password.as_bytes()).await
        };
        let e = match attempt {
            Ok(a) => break a,
            Err(e) => e,
        };
        tries += 1;
        let again = wrong_answer(&e, registering).filter(|_| tries < WIZARD_TRIES);
        let Some(which) = again else {
            return Err(e.into());
        };
        errln!("cmtp: {e}");
        match which {
            Answer::Address => {
                errln!("Please give the address again.");
                address = ask_address()?;
            }
            Answer::Invite => {
                errln!("Please give the invite token again.");
                invite = ask_invite()?;
            }
            Answer::Server => {
                errln!("Please give the server again.");
                server = ask_server()?;
            }
            Answer::Password => {
                errln!("Please give the password again.");
                password = ask_password()?;
            }
        }
    };
    out.account(
        if registering {
            "registered"
        } else {
            "logged in as"
        },
        client,
        &account,
    );
    Ok(())
}
