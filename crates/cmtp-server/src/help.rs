//! The HELP text.

/// What HELP answers.
pub(crate) const TEXT: &str = "\
cmtpd speaks CMTP/1, the Cipher Mail Transport Protocol (docs/PROTOCOL.md).
Commands are NUL-terminated words, each argument NUL-terminated; some carry
a binary payload (u32 length + bytes). Every reply is signed.

  OHAI                      greeting: domain, key, nonce, limits
  MAIL <message>            deliver one self-describing message
  KEYREQUEST <user> <domain> key statement of user@domain; empty user: the
                            server's key; empty domain: this server's domain
  NOOP                      does nothing, answers SUCCESS
  LOGIN <user> <KE1>        start an OPAQUE login (then LOGINFINISH <KE3>)
  KEYLOGIN <user> <sig>     log in with the identity key a device keeps
  HELP                      this text
  OBAI                      close the connection
  REGISTER <user> <invite> <request>   start a registration (then REGFINISH)
  PASSWORD <request>        start a password change (logged in)
  RESET <user> <token> <request>       new password and key with a reset
                            token from the administrator (then REGFINISH)
  LIST                      list your mailbox (logged in)
  FETCH <id>                fetch one message (logged in)
  DELETE <id>               delete one message (logged in)
  LISTPAGE <before> <limit> message summaries below an id, newest first
  CHANGES <since> <limit>   arrivals, flag changes, removals after a modseq
  FLAGS <set> <clear> <ids> set and clear flags (seen 1, answered 2,
                            flagged 4, deleted 8) of your messages
  MOVE <folder> <ids>       file your messages into another folder
  APPEND <folder> <flags> <message>  file a message of your own (Sent copy)
  (ids are per user: your first message is 1)
  KEYPROOF <user> <domain>  key statement with its proof in the domain's key
                            directory: epoch head, cosignatures, lookup proof
  KTHEAD <epoch>            signed head of a directory epoch (empty: newest)
  KTAUDIT <from> <to>       heads and append-only proof between two epochs
  KTWITNESS <domain>        ask this server to witness a domain's newest head
  KTEVIDENCE <domain>       proof of a domain's misbehaviour, if held
  KTHISTORY                 your key's history in the directory (logged in)

Use the cmtp client (`cmtp --help`) rather than typing these by hand.
";
