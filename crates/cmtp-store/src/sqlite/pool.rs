//! A small pool of read-only connections; reads run on tokio's blocking
//! threads, so they never block the async runtime, and as many run at once
//! as there are connections (WAL lets readers work beside the writer).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::open_reader;
use crate::error::StoreError;

pub(crate) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    path: PathBuf,
    busy_timeout: std::time::Duration,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A connection borrowed from the pool; goes back on drop (even when the
/// read panicked).
struct Borrowed {
    pool: Arc<ReadPool>,
    conn: Option<Connection>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(&self.pool.idle).push(conn);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReadPool {
    pub(crate) fn new(
        conns: Vec<Connection>,
        path: PathBuf,
        busy_timeout: std::time::Duration,
    ) -> ReadPool {
        ReadPool {
            permits: Arc::new(Semaphore::new(conns.len().max(1))),
            idle: Mutex::new(conns),
            path,
            busy_timeout,
        }
    }

    /// Runs `op` on a read-only connection on a blocking thread.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("read pool closed".into()))?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let idle = lock(&pool.idle).pop();
            let conn = match idle {
                Some(c) => c,
                // Only if a connection was lost (a read panicked).
                None => open_reader(&pool.path, pool.busy_timeout)?,
            };
            let borrowed = Borrowed {
                pool: Arc::clone(&pool),
                conn: Some(conn),
                _permit: permit,
            };
            match &borrowed.conn {
                Some(conn) => op(conn),
                None => Err(StoreError::Internal("read connection missing".into())),
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err(StoreError::Unavailable("read cancelled".into())),
            Err(_) => Err(StoreError::Internal("a read panicked".into())),
        }
    }
}
