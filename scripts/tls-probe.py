#!/usr/bin/env python3
"""Look at a CMTP/2 server's TLS with Python's standard ssl module.

    scripts/tls-probe.py HOST PORT [--expect-key HEX]

Reads the clear banner line (PROTOCOL.md §4.1), then performs a TLS 1.3
handshake offering ALPN "cmtp/2" (§4.4). A standard TLS client does not
offer raw public keys, so the server shows a self-issued X.509 certificate
carrying its Ed25519 key; no CA or name is checked — the key is, and this
script prints it so it can be compared with the `key:` of the greeting or
the `_cmtpkey` record. With --expect-key, exits 1 unless the key matches.

Prints one `name: value` per line: banner, version, alpn, cipher, key.
Needs Python 3.8+ and nothing else (the key is read from the certificate's
DER without third-party modules).
"""

import argparse
import socket
import ssl
import sys

# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE {
# SEQUENCE { OID 1.3.101.112 }, BIT STRING (33 bytes: 0 unused bits, key) }.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def ed25519_key_from_cert(der: bytes) -> bytes:
    """The 32-byte Ed25519 key of a certificate, found by its SPKI prefix."""
    at = der.find(ED25519_SPKI_PREFIX)
    if at < 0 or der.find(ED25519_SPKI_PREFIX, at + 1) >= 0:
        raise ValueError("the certificate does not carry exactly one Ed25519 key")
    start = at + len(ED25519_SPKI_PREFIX)
    return der[start : start + 32]


def read_banner(sock: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("closed before the end of the banner")
        line += byte
        if len(line) > 512:
            raise ValueError("banner longer than 512 bytes")
    return line.decode("utf-8", "replace").rstrip("\r\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--expect-key", help="64 hex digits: the server key to expect")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the key is what is checked, not a name
    ctx.verify_mode = ssl.CERT_NONE  # no CA: CMTP pins the key itself
    ctx.set_alpn_protocols(["cmtp/2"])

    with socket.create_connection((args.host, args.port), timeout=args.timeout) as raw:
        banner = read_banner(raw)
        fields = banner.split(" ")
        if len(fields) < 3 or fields[0] != "554" or fields[2] != "CMTP/2":
            print(f"banner: {banner}")
            print("error: not a CMTP/2 server", file=sys.stderr)
            return 1
        with ctx.wrap_socket(raw, server_hostname=None) as tls:
            key = ed25519_key_from_cert(tls.getpeercert(binary_form=True))
            print(f"banner: {banner}")
            print(f"version: {tls.version()}")
            print(f"alpn: {tls.selected_alpn_protocol()}")
            print(f"cipher: {tls.cipher()[0]}")
            print(f"key: {key.hex()}")

    if args.expect_key and args.expect_key.lower() != key.hex():
        print("error: the server's key is not the expected one", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
