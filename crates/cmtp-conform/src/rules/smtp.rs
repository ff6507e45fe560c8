//! What is said in clear after the banner, where TLS should begin: an SMTP
//! command line gets one SMTP-formatted refusal (§16), a CMTP/1 command the
//! refusal that says TLS is required (§4.1), and the connection closes at
//! once.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::probe::{Check, fail, read_banner};
use crate::transport::{ReadOutcome, Transport};

/// How soon the close must follow (§16, and the design's "fails fast").
const WITHIN: Duration = Duration::from_secs(1);

/// Sends `line` after the banner; returns what came back before the
/// close, or fails if the connection stays open for [`WITHIN`].
fn refusal(cx: &Ctx<'_>, line: &[u8]) -> Check<String> {
    let timeout = cx.cfg.reply_timeout;
    let mut t = Transport::connect(cx.addr, timeout)
        .map_err(|e| fail("a TCP connection", e.to_string()))?;
    let mut buf = Vec::new();
    read_banner(&mut t, &mut buf, timeout)?;
    t.write_all(line)
        .map_err(|e| fail("the target to read an SMTP line", e.to_string()))?;
    let deadline = Instant::now() + WITHIN;
    loop {
        match t.read_until(&mut buf, deadline) {
            ReadOutcome::Data => {}
            ReadOutcome::Closed => break,
            ReadOutcome::Timeout => {
                return Err(fail(
                    format!(
                        "one SMTP reply and a close within 1 s after {:?}",
                        String::from_utf8_lossy(line)
                    ),
                    format!(
                        "still open after 1 s (received {:?})",
                        String::from_utf8_lossy(&buf)
                    ),
                ));
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Checks that `got` is one SMTP reply line with `code` (and notes a text
/// other than the spec's).
fn one_line(cx: &mut Ctx<'_>, got: &str, code: &str, exact: &str, sent: &str) -> Check {
    let lines = got.split_inclusive("\r\n").count();
    if !got.starts_with(&format!("{code} ")) || !got.ends_with("\r\n") || lines != 1 {
        return Err(fail(
            format!("one SMTP reply line `{}` to {sent:?}", exact.trim_end()),
            format!("{got:?}"),
        ));
    }
    if got != exact {
        cx.note(format!(
            "the reply to {sent:?} differs from the spec's wording: {:?}",
            got.trim_end()
        ));
    }
    Ok(())
}

fn refused_554(cx: &Ctx<'_>) -> String {
    format!(
        "554 5.5.0 {} this is a CMTP server (CMTP/2), SMTP is not spoken here\r\n",
        cx.domain()
    )
}

pub(super) fn ehlo(cx: &mut Ctx<'_>) -> Check {
    let got = refusal(cx, b"EHLO conform.invalid\r\n")?;
    let exact = refused_554(cx);
    one_line(cx, &got, "554", &exact, "EHLO conform.invalid")
}

pub(super) fn quit(cx: &mut Ctx<'_>) -> Check {
    let got = refusal(cx, b"QUIT\r\n")?;
    let exact = format!(
        "221 2.0.0 {} closing: this is a CMTP server\r\n",
        cx.domain()
    );
    one_line(cx, &got, "221", &exact, "QUIT")
}

pub(super) fn verbs(cx: &mut Ctx<'_>) -> Check {
    let exact = refused_554(cx);
    for line in [
        "HELO conform.invalid\r\n",
        "ehlo conform.invalid\r\n",
        "MAIL FROM:<conform@conform.invalid>\r\n",
        "RCPT TO:<postmaster>\r\n",
        "DATA\r\n",
        "BDAT 10 LAST\r\n",
        "RSET\r\n",
        "VRFY postmaster\r\n",
        "EXPN staff\r\n",
        "STARTTLS\r\n",
        "AUTH PLAIN\r\n",
        "ETRN conform.invalid\r\n",
        "TURN\r\n",
        "ATRN conform.invalid\r\n",
        "NOOP\r\n",
        "noop\r\n",
        "HELP\r\n",
        "Help\tme\r\n",
        "NOOP hello\r\n",
        "RSET\n",
    ] {
        let got = refusal(cx, line.as_bytes())?;
        one_line(cx, &got, "554", &exact, line.trim_end())?;
    }
    Ok(())
}

pub(super) fn clear_cmtp1(cx: &mut Ctx<'_>) -> Check {
    let exact = format!(
        "554 5.7.0 {} CMTP/2: TLS 1.3 is required; nothing is spoken in clear here (CMTP/1 is not supported)\r\n",
        cx.domain()
    );
    let got = refusal(cx, b"OHAI\0")?;
    if got.as_bytes().first() == Some(&0) || got.as_bytes().starts_with(&[0, 0, 0, 1]) {
        return Err(fail(
            format!(
                "one line `{}` in clear to `OHAI\\0` sent in clear",
                exact.trim_end()
            ),
            "a CMTP reply in clear: the target speaks CMTP/1 without TLS",
        ));
    }
    one_line(cx, &got, "554", &exact, "OHAI\\0 (CMTP/1, in clear)")
}
