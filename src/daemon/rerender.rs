//! `daemon --from-kubernetes` with the API server out of reach: the daemon
//! runs on the spec rendered last and renders again, with backoff, until it
//! works (the file watch then reloads the new spec).

use std::time::Duration;

use super::status::Shared;
use super::supervisor::Backoff;

/// A spec the daemon starts on that could not be rendered anew (the API
/// server out of reach): why, and how to try again. Until `attempt`
/// succeeds (it writes the spec file, which the file watch then reloads)
/// the daemon runs on the spec rendered last and its status says so.
pub struct Rerender {
    pub why: String,
    pub attempt: Box<dyn FnMut() -> anyhow::Result<()> + Send>,
}

/// How often a failed render is tried again: soon at first (an API server
/// restarting with the node), then at most every minute.
const RERENDER_FIRST: Duration = Duration::from_secs(1);
const RERENDER_MAX: Duration = Duration::from_secs(60);

/// Tries the render again, with backoff, until it works; the status says
/// meanwhile that the spec in force is the one rendered last.
pub(super) async fn render_until_it_works(rerender: Rerender, status: Shared) {
    let Rerender { why, mut attempt } = rerender;
    let set = |text: Option<String>| {
        if let Ok(mut s) = status.lock() {
            s.render_error = text;
        }
    };
    set(Some(format!("running on the spec rendered last: {why}")));
    let mut backoff = Backoff::new(RERENDER_FIRST, RERENDER_MAX);
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let tried = tokio::task::spawn_blocking(move || {
            let result = attempt();
            (attempt, result)
        })
        .await;
        let Ok((again, result)) = tried else {
            tracing::error!("rendering the spec panicked; running on the spec rendered last");
            return;
        };
        attempt = again;
        match result {
            Ok(()) => {
                tracing::info!("the spec is rendered from the cluster again");
                set(None);
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot render the spec yet (running on the one rendered last): {e:#}"
                );
                set(Some(format!("running on the spec rendered last: {e:#}")));
            }
        }
    }
}
