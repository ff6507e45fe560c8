//! Outside software the interop tests run (swaks, openssl, Python's dkimpy):
//! a clear failure when it is missing, never a skip. `./scripts/test`
//! installs all of it.

use std::process::Command;

/// Fails the test unless the command `tool` is on the PATH.
pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is not installed: ./scripts/test installs it");
}

/// Fails the test unless Python's dkimpy, the independent DKIM signer and
/// verifier, can be imported.
pub fn need_dkimpy() {
    need("python3");
    let ok = Command::new("python3")
        .args(["-c", "import dkim"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "Python's dkimpy is not installed: ./scripts/test installs it"
    );
}
