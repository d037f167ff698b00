//! What the daemon's listeners (status socket, CNI hand-off, metrics)
//! share: the accept loop, a bound on connections served at once, accept
//! errors that are waited out instead of ending the listener (after one "too
//! many open files" the health endpoint must come back once connections
//! close), and root-only Unix sockets.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
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
async fn accept_failed(listener: &str, error: &std::io::Error) {
    tracing::warn!("{listener}: accept failed, trying again: {error}");
    tokio::time::sleep(ACCEPT_RETRY).await;
}

/// A listening socket the accept loop can serve.
pub trait Listener: Send + 'static {
    type Conn: Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    async fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().await.map(|(conn, _)| conn)
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    async fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(conn, _)| conn)
    }
}

/// Serves `listener` forever: each connection handled by `handle` on a task
/// of its own, at most `limit` at once (the rest wait in the backlog).
pub async fn serve_each<L, F, Fut>(listener: L, name: &'static str, limit: Limit, handle: F) -> !
where
    L: Listener,
    F: Fn(L::Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let slot = limit.slot().await;
        match listener.accept_one().await {
            Ok(conn) => {
                let served = handle(conn);
                tokio::spawn(async move {
                    let _slot = slot;
                    served.await;
                });
            }
            Err(e) => accept_failed(name, &e).await,
        }
    }
}

/// A Unix socket at `path` (one left by an earlier daemon replaced) that
/// only root may connect to. It lives in state_dir, which is 0700 already,
/// so the moment between bind and chmod exposes nothing (and no
/// process-wide umask flip races the daemon's other threads).
pub fn bind_root_only(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
