//! What the scenarios share: logged-in connections and messages sealed
//! before the clock starts.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use cmtp_proto::command::Command;
use cmtp_proto::content::Content;
use cmtp_proto::payload::decode_listing;
use cmtp_proto::reply::Status;

use crate::conn::BenchConn;
use crate::server::User;

/// A message ready to send: `MAIL\0` and the encoded message, and its hash.
pub(crate) struct Prebuilt {
    pub(crate) bytes: Vec<u8>,
    pub(crate) hash: [u8; 32],
}

/// Opens `n` connections to `addr`, each greeted (OHAI, signature checked)
/// and logged in with KEYLOGIN as `users[i % users.len()]`.
pub(crate) async fn logged_in(
    addr: SocketAddr,
    users: &[User],
    n: usize,
) -> anyhow::Result<Vec<BenchConn>> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let user = users[i % users.len()].clone();
        set.spawn(async move {
            let mut c = BenchConn::connect(addr, None).await?;
            c.ohai().await?;
            c.key_login(&user.address, user.key()).await?;
            anyhow::Ok((i, c))
        });
    }
    let mut conns: Vec<Option<BenchConn>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, c) = r??;
        conns[i] = Some(c);
    }
    Ok(conns.into_iter().map(|c| c.expect("joined")).collect())
}

/// Seals one message per `(sender, recipient)` pair with a text of `size`
/// bytes, on every core (this is the client's work, done before the clock).
pub(crate) fn seal_all(
    pairs: &[(usize, usize)],
    senders: &[User],
    recipients: &[User],
    size: usize,
) -> anyhow::Result<Vec<Prebuilt>> {
    let text: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(size)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = pairs.len().div_ceil(threads).max(1);
    let parts: Vec<anyhow::Result<Vec<Prebuilt>>> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .chunks(chunk)
            .enumerate()
            .map(|(part, list)| {
                let text = &text;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(list.len());
                    for (j, &(from, to)) in list.iter().enumerate() {
                        let from = &senders[from];
                        let to = &recipients[to];
                        let content = Content {
                            subject: format!("bench {}", part * chunk + j),
                            date: "2026-11-26T00:00:00Z".into(),
                            text: text.clone(),
                            ..Content::default()
                        };
                        let msg = content.seal(
                            &from.address,
                            from.key(),
                            &to.address,
                            &to.key().public(),
                            &mut rand_core::OsRng,
                        )?;
                        let mut bytes = Command::Mail.to_bytes();
                        bytes.reserve(msg.encoded_len());
                        msg.encode(&mut bytes);
                        out.push(Prebuilt {
                            bytes,
                            hash: msg.hash(),
                        });
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sealing thread"))
            .collect()
    });
    let mut all = Vec::with_capacity(pairs.len());
    for p in parts {
        all.extend(p?);
    }
    Ok(all)
}

/// How many messages the logged-in user of `conn` has (LIST).
pub(crate) async fn mailbox_count(conn: &mut BenchConn) -> anyhow::Result<usize> {
    let r = conn.command(&Command::List).await?;
    if r.status != Status::Success {
        bail!("LIST: {} {}", r.status, r.text());
    }
    Ok(decode_listing(&r.body).context("LIST body")?.len())
}
