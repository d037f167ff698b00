//! What a tailscaled says of itself (`tailscale --socket=S status --json`):
//! its node key, whether it runs, the routes its control server made
//! primary for it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SelfStatus {
    pub backend_state: String,
    #[serde(rename = "Self")]
    pub self_: Option<SelfNode>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct SelfNode {
    /// `nodekey:...`, as Headscale's API names the node.
    pub public_key: String,
    pub host_name: String,
    pub primary_routes: Option<Vec<String>>,
}

impl SelfStatus {
    pub fn parse(json: &str) -> Result<SelfStatus, String> {
        serde_json::from_str(json).map_err(|e| format!("tailscale status --json: {e}"))
    }

    /// The node key, once tailscaled is logged in.
    pub fn node_key(&self) -> Option<&str> {
        self.self_
            .as_ref()
            .map(|s| s.public_key.as_str())
            .filter(|k| k.starts_with("nodekey:") && self.backend_state == "Running")
    }
}

/// Asks the tailscaled behind `socket`, within `limit`.
pub fn status(tailscale: &Path, socket: &Path, limit: Duration) -> Result<SelfStatus, String> {
    let socket = format!("--socket={}", socket.display());
    let out = ask(tailscale, &[&socket, "status", "--json"], limit)?;
    // `status` exits 1 when logged out yet still prints its JSON.
    SelfStatus::parse(&String::from_utf8_lossy(&out.stdout))
}

/// Runs the `tailscale` CLI with `args`, killed after `limit`: a hung
/// tailscaled must not hang a plan or a check. Its output is read while it
/// runs (a netmap's JSON outgrows a pipe's buffer).
pub fn ask(tailscale: &Path, args: &[&str], limit: Duration) -> Result<Output, String> {
    use std::io::Read;
    let what = || format!("{} {}", tailscale.display(), args.join(" "));
    let mut child = Command::new(tailscale)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", tailscale.display()))?;
    let reader = child.stdout.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not answer in {limit:?}", what()));
            }
        }
    };
    // The pipe closes when the CLI exits (it starts no children of its own).
    let stdout = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_key_only_once_running() {
        let running = SelfStatus::parse(
            r#"{"BackendState":"Running","Self":{"PublicKey":"nodekey:ab","HostName":"n","PrimaryRoutes":["10.244.1.0/24"]}}"#,
        )
        .unwrap();
        assert_eq!(running.node_key(), Some("nodekey:ab"));
        let starting =
            SelfStatus::parse(r#"{"BackendState":"NeedsLogin","Self":{"PublicKey":"nodekey:ab"}}"#)
                .unwrap();
        assert_eq!(starting.node_key(), None);
    }
}
