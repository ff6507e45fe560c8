//! The text a person edits to write a message: a header block (To, Cc,
//! Subject), an empty line, then the text — as mutt and himalaya open the
//! editor. [`template`] writes it, [`parse`] reads it back.

use crate::failure::{Error, Result};
use crate::store::Composed;

/// The editor's text for `c`.
pub fn template(c: &Composed) -> String {
    format!(
        "To: {}\nCc: {}\nSubject: {}\n\n{}",
        c.to.join(", "),
        c.cc.join(", "),
        c.subject,
        c.text
    )
}

fn list(v: &str) -> Vec<String> {
    v.split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads an edited template back into `c` (attachments and the plaintext
/// choice stay as they were). Header lines are `Name: value` (To, Cc and
/// Subject, any case) up to the first empty line; anything else there is
/// refused, so that a mistyped header is not sent as text.
pub fn parse(edited: &str, c: &Composed) -> Result<Composed> {
    let mut out = Composed {
        to: Vec::new(),
        cc: Vec::new(),
        subject: String::new(),
        text: String::new(),
        ..c.clone()
    };
    let mut rest = edited;
    loop {
        let (line, next) = match rest.split_once('\n') {
            Some((l, n)) => (l, Some(n)),
            None => (rest, None),
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            out.text = next.unwrap_or("").to_owned();
            return Ok(out);
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            Error::Invalid(format!(
                "the header line {line:?} is not `Name: value`; leave an empty line between the headers and the text"
            ))
        })?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "to" => out.to.extend(list(value)),
            "cc" => out.cc.extend(list(value)),
            "subject" => out.subject = value.to_owned(),
            other => {
                return Err(Error::Invalid(format!(
                    "unknown header {other:?} (To, Cc and Subject are known)"
                )));
            }
        }
        match next {
            Some(n) => rest = n,
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_reads_back() {
        let c = Composed {
            to: vec!["bob@b.test".into(), "carol@c.test".into()],
            cc: vec![],
            subject: "Grüße".into(),
            text: "Hallo\n\nzweiter Absatz\n".into(),
            ..Composed::default()
        };
        assert_eq!(parse(&template(&c), &c).unwrap(), c);
        let edited = "to: bob@b.test,  dave@d.test\nCC: eve@e.test\nSubject:  Hi  \n\nText\n";
        let p = parse(edited, &Composed::default()).unwrap();
        assert_eq!(p.to, ["bob@b.test", "dave@d.test"]);
        assert_eq!(p.cc, ["eve@e.test"]);
        assert_eq!(p.subject, "Hi");
        assert_eq!(p.text, "Text\n");
        assert!(parse("Bcc: x@y.z\n\ntext", &Composed::default()).is_err());
        assert!(parse("just text\n", &Composed::default()).is_err());
    }
}
