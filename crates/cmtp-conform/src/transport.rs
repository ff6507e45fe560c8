//! The byte transport under a probe connection.
//!
//! Every rule talks to the target through [`Transport`]: connect, write
//! bytes, read bytes until a deadline, close. Today that is plain TCP
//! (CMTP/1, PROTOCOL.md §1); when connections move inside TLS 1.3 only this
//! module changes, the rules stay as they are.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What a read until a deadline gave.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// Bytes arrived (appended to the caller's buffer).
    Data,
    /// The peer closed its side (or reset the connection).
    Closed,
    /// Nothing arrived before the deadline.
    Timeout,
}

/// One connection to the target.
#[derive(Debug)]
pub(crate) struct Transport {
    stream: TcpStream,
}

/// Resolves `target` (`host:port`) to its first address.
pub(crate) fn resolve(target: &str) -> io::Result<SocketAddr> {
    target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{target} has no address")))
}

impl Transport {
    /// Connects within `timeout`.
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Transport> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Transport { stream })
    }

    /// Wraps an accepted stream (the checker's own served domain).
    pub(crate) fn accepted(stream: TcpStream, timeout: Duration) -> io::Result<Transport> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Transport { stream })
    }

    /// Writes all of `bytes`.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads what is available into `buf`, waiting until `deadline` at most.
    pub(crate) fn read_until(&mut self, buf: &mut Vec<u8>, deadline: Instant) -> ReadOutcome {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return ReadOutcome::Timeout;
            }
            if self.stream.set_read_timeout(Some(deadline - now)).is_err() {
                return ReadOutcome::Closed;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return ReadOutcome::Data;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return ReadOutcome::Timeout;
                }
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    /// Closes our sending side; the peer sees the end of the stream.
    pub(crate) fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}
