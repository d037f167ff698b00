//! What both of the daemon's listeners (status socket, metrics) share: a
//! bound on connections served at once, and accept errors that are waited
//! out instead of ending the listener (after one "too many open files" the
//! health endpoint must come back once connections close).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections served at once per listener; more wait in the backlog, so a
/// flood cannot take the file descriptors a reconcile pass needs.
pub const MAX_CONNECTIONS: usize = 32;

/// How long to wait after a failed accept before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct Limit(Arc<Semaphore>);

impl Limit {
    pub fn new() -> Limit {
        Limit::with(MAX_CONNECTIONS)
    }

    /// At most `connections` served at once.
    pub fn with(connections: usize) -> Limit {
        Limit(Arc::new(Semaphore::new(connections)))
    }

    /// Waits for a free connection slot; the slot is held as long as the permit.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            // The semaphore is never closed; were it, waiting again is harmless.
            if let Ok(permit) = self.0.clone().acquire_owned().await {
                return permit;
            }
        }
    }
}

/// Logs a failed accept and waits before the next one.
pub async fn accept_failed(listener: &str, error: &std::io::Error) {
    tracing::warn!("{listener}: accept failed, trying again: {error}");
    tokio::time::sleep(ACCEPT_RETRY).await;
}
