//! What an established, idle protected connection holds on the server's
//! heap (issue 11: 10,000 idle connections under 100 MiB resident). The
//! connection is driven in memory, as in `connection::tests`; a counting
//! allocator measures what the server's side keeps once the client has
//! gone quiet (Rust's heap: aws-lc's two AES-GCM contexts, 1.2 KiB from
//! its own C allocator, are not counted). rustls is carried with a patch
//! that frees its read buffer between reads (vendor/README.md): 2.2 KB
//! with it; without it, 6.8 KB, and this test fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmtp_proto::command::Command;
use cmtp_proto::connection::client::{ClientConnection, ClientEvent};
use cmtp_proto::connection::server::{ServerConfig, ServerConnection};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::names::Domain;
use cmtp_proto::reply::Status;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// A server connection after the TLS handshake and an answered OHAI, with
/// its client dropped (the server's side is all that is left).
fn idle_server(config: &Arc<ServerConfig>, now: Instant) -> ServerConnection<()> {
    let mut server = ServerConnection::new(config.clone(), [42; 32], now);
    let mut client = ClientConnection::new(Some(config.key.public()), Duration::from_secs(30), now);
    let mut answered = false;
    let mut sent = false;
    for _ in 0..100 {
        let up = client.take_output(now);
        if !up.is_empty() {
            server.handle_input(&up, now);
        }
        while server.poll_event(now).is_some() {}
        let down = server.take_output();
        if !down.is_empty() {
            client.handle_input(&down, now);
        }
        while let Some(ev) = client.poll_event(now).expect("the client's connection") {
            match ev {
                ClientEvent::Ready { .. } if !sent => {
                    client.send(&Command::Ohai, 64 * 1024, now);
                    sent = true;
                }
                ClientEvent::Reply { reply, .. } => {
                    assert_eq!(reply.status, Status::Success);
                    answered = true;
                }
                _ => {}
            }
        }
        if answered && up.is_empty() && down.is_empty() {
            break;
        }
    }
    assert!(answered, "OHAI was answered over TLS");
    server
}

#[test]
fn an_idle_protected_connection_holds_under_4_kib_of_heap_and_no_tls_read_buffer() {
    let now = Instant::now();
    let config = Arc::new(ServerConfig::new(
        Domain::parse("a.test").unwrap(),
        IdentityKey::from_seed(&[7; 32]),
    ));
    // Once-per-process allocations (the crypto provider, lazy tables) are
    // not the connections'.
    drop(idle_server(&config, now));

    const N: usize = 32;
    let mut servers = Vec::with_capacity(N);
    for _ in 0..N {
        servers.push(idle_server(&config, now));
    }
    // What dropping the servers frees is what they held (the clients, and
    // whatever the process keeps after a connection, are not counted).
    let region = Region::new(GLOBAL);
    drop(servers);
    let freed = region.change();
    let held = (freed.bytes_deallocated as isize
        - freed.bytes_allocated as isize
        - freed.bytes_reallocated)
        / N as isize;
    eprintln!(
        "an idle protected connection holds {held} bytes of heap on the server's side \
         (its state machine {} bytes of them inline)",
        std::mem::size_of::<ServerConnection<()>>()
    );
    // Upstream rustls 0.23.46 would add a 4,096-byte read buffer and 640
    // bytes of handshake spans to each.
    assert!(
        held < 4096,
        "an idle connection holds {held} bytes (bound: 4,096)"
    );
}
