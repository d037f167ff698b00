//! Daemon mode's own tailnet node: a tailscaled supervised in a network
//! namespace of its own (see docs/architecture.md, "Why tailscaled runs in a
//! namespace of its own"), restarted with exponential backoff, its output
//! in headcni's log. The auth key is handed over as `file:PATH` and never read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use super::events::Trigger;
use super::metrics::Metrics;
use super::status::Shared;
use crate::spec::Spec;

/// A key file others can read is refused: the key would be one `cat` away.
pub fn check_key_file(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("auth key file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "auth key file {} is readable by others than its owner (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != 0 {
        return Err(format!(
            "auth key file {} must belong to root",
            path.display()
        ));
    }
    Ok(())
}

/// Why a plain `http://` login server will fail tailscale after its first
/// connection, if it will. tailscale dials such a URL over HTTPS on port
/// 443 whenever it redials within two minutes of its last dial, unless the
/// host is a private or loopback address (tailscale 1.98,
/// control/ts2021/client.go): a restarted Headscale or tailscaled then
/// never reconnects. Seen against real Headscale (tests/real_tailnet.rs).
pub fn plain_http_advice(login_server: &str) -> Option<String> {
    let rest = login_server.strip_prefix("http://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let spared = host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
            std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        });
    (!spared).then(|| {
        format!(
            "login_server {login_server} is plain HTTP to a public name or address: tailscale reconnects to it over HTTPS on port 443, so after a restart of Headscale or tailscaled this node stays offline; serve Headscale over TLS and use https://"
        )
    })
}

fn tailscaled_args(spec: &Spec) -> Vec<String> {
    let d = &spec.daemon;
    let dir = spec.state_dir.join("tailscaled");
    let mut args = vec![
        format!("--tun={}", spec.tailnet.interface),
        format!("--statedir={}", dir.display()),
        format!("--socket={}", socket_path(spec).display()),
        format!("--port={}", d.port),
        // A node logged in to Headscale sends nothing to Tailscale Inc's
        // log servers.
        "--no-logs-no-support".into(),
    ];
    args.extend(d.tailscaled_flags.iter().cloned());
    args
}

fn socket_path(spec: &Spec) -> PathBuf {
    spec.state_dir.join("tailscaled.sock")
}

fn up_args(spec: &Spec, login_server: &str, key: Option<&Path>) -> Vec<String> {
    let d = &spec.daemon;
    let hostname = d.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "headcni".into())
    });
    let mut args = vec![
        format!("--socket={}", socket_path(spec).display()),
        "up".into(),
        format!("--login-server={login_server}"),
        format!("--hostname={hostname}"),
        format!(
            "--advertise-routes={}",
            spec.pod_network
                .cidrs()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        // Nothing for it to filter in a namespace of its own, and no host
        // chains to fight over (tailscale's ts-input).
        "--netfilter-mode=off".into(),
        // Pods keep the cluster's DNS; tailscaled would rewrite the
        // namespace's resolv.conf, a file the reconcile loop owns.
        "--accept-dns=false".into(),
    ];
    if let Some(key) = key {
        args.push(format!("--auth-key=file:{}", key.display()));
    }
    // Other nodes' pod CIDRs are their subnet routes: tailscaled on Linux
    // drops traffic for subnet routes it was not told to accept.
    if spec.pod_network.has_cluster() {
        args.push("--accept-routes".into());
    }
    args.extend(d.up_flags.iter().cloned());
    args
}

/// A command that runs inside the tailnet namespace; with `resolv`, in a
/// mount namespace of its own where that file is /etc/resolv.conf (what
/// `ip netns exec` does with /etc/netns/NAME/resolv.conf).
fn in_namespace(
    program: &Path,
    args: &[String],
    netns: &std::fs::File,
    resolv: Option<&Path>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::kernel::netlink::netns::enter_before_exec(&mut cmd, netns, resolv);
    cmd
}

fn log_output(name: &'static str, child: &mut tokio::process::Child) {
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "tailscaled", "{name}: {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "tailscaled", "{name}: {line}");
            }
        });
    }
}

/// Exponential backoff with jitter, reset after a healthy run.
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to +25% jitter so many nodes do not retry in step.
        let jitter = base.mul_f64(jitter_fraction() * 0.25);
        base + jitter
    }
}

/// Runs tailscaled until shutdown, restarting it when it exits.
pub async fn run(
    spec: Spec,
    status: Shared,
    metrics: Metrics,
    tx: UnboundedSender<Trigger>,
    mut shutdown: watch::Receiver<bool>,
    mut wired: watch::Receiver<bool>,
) {
    let d = spec.daemon.clone();
    let netns_path = d.netns_path();
    if let Some(advice) = d.login_server.as_deref().and_then(plain_http_advice) {
        tracing::warn!("{advice}");
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    if let Ok(mut s) = status.lock() {
        s.tailscaled.supervised = true;
    }
    tokio::select! {
        _ = wait_for_uplink(&mut wired) => {}
        _ = shutdown.changed() => return,
    }
    // A minted key a killed daemon left behind: single-use, but still a key.
    remove_minted_keys(&spec);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = match start(&spec, &netns_path, &d).await {
            Ok(child) => Some(child),
            Err(e) => {
                tracing::error!("tailscaled: {e}");
                metrics.tailscaled_start_failures.inc();
                if let Ok(mut s) = status.lock() {
                    s.last_error = Some(format!("tailscaled: {e}"));
                }
                None
            }
        };
        if let Some(mut child) = started {
            let began = Instant::now();
            if let Ok(mut s) = status.lock() {
                s.tailscaled.running = true;
                s.tailscaled.pid = child.id();
            }
            let _ = tx.send(Trigger::Tailscaled);
            let key = match (&d.auth_key_file, &spec.headscale) {
                (Some(file), _) => Some(AuthKey::File(file.clone())),
                (None, Some(h)) if h.user.is_some() => Some(AuthKey::Mint(h.clone())),
                _ => None,
            };
            // The login lives as long as this tailscaled: aborted (its
            // minted key file removed) when it exits or the daemon stops.
            let login = match (d.login_server.clone(), key) {
                (Some(server), Some(key)) => {
                    let (spec2, path2) = (spec.clone(), netns_path.clone());
                    Some(AbortOnDrop(tokio::spawn(async move {
                        log_in(&spec2, &path2, &server, key).await
                    })))
                }
                _ => None,
            };
            tokio::select! {
                exit = child.wait() => {
                    tracing::warn!("tailscaled exited: {}", exit.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                    if began.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                }
                _ = shutdown.changed() => {
                    stop(&mut child).await;
                    if let Ok(mut s) = status.lock() {
                        s.tailscaled.running = false;
                        s.tailscaled.pid = None;
                    }
                    return;
                }
            }
            drop(login);
            if let Ok(mut s) = status.lock() {
                s.tailscaled.running = false;
                s.tailscaled.pid = None;
                s.tailscaled.restarts += 1;
            }
            metrics.tailscaled_restarts.inc();
            let _ = tx.send(Trigger::Tailscaled);
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Waits (at most [`UPLINK_WAIT`]) for the loop's first pass to wire the
/// tailnet namespace's uplink. tailscaled must not start before it: its
/// network monitor takes its first look at start-up but its engine
/// subscribes to changes only later (tailscale v1.98.10,
/// wgengine/userspace.go: `netMon.Start()` before the eventbus
/// subscription), so an address that arrives in between is never seen and
/// tailscaled stays "network down" (no handshake, no login traffic) until
/// some later link change. Seen in CI as a flaky pod-to-pod ping.
async fn wait_for_uplink(wired: &mut watch::Receiver<bool>) {
    match tokio::time::timeout(UPLINK_WAIT, wired.wait_for(|w| *w)).await {
        Ok(Ok(_)) => {}
        // The loop is gone (shutting down) or stuck: start anyway, tailscaled
        // then sees later link changes itself.
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(
            "the tailnet namespace is not wired after {UPLINK_WAIT:?}; starting tailscaled anyway"
        ),
    }
}

const UPLINK_WAIT: Duration = Duration::from_secs(10);

async fn start(
    spec: &Spec,
    netns_path: &Path,
    d: &crate::spec::DaemonConfig,
) -> Result<tokio::process::Child, String> {
    crate::kernel::netlink::netns::ensure_netns(netns_path)
        .map_err(|e| format!("cannot create namespace {}: {e}", netns_path.display()))?;
    if let Some(key) = &d.auth_key_file {
        check_key_file(key)?;
    }
    crate::store::create_state_dir(&spec.state_dir.join("tailscaled"))
        .map_err(|e| format!("state dir: {e}"))?;
    let netns =
        std::fs::File::open(netns_path).map_err(|e| format!("{}: {e}", netns_path.display()))?;
    let args = tailscaled_args(spec);
    tracing::info!(
        "starting {} {} in {}",
        d.tailscaled.display(),
        args.join(" "),
        netns_path.display()
    );
    // Resolvers that work inside the namespace (a login server by name):
    // the reconcile loop keeps /etc/netns/NAME/resolv.conf, written in place
    // so this bind follows its changes. Before its first pass there is none
    // yet: a marked placeholder holds the place. (Only where the node has a
    // resolv.conf to bind over.)
    let resolv = Path::new("/etc/resolv.conf")
        .exists()
        .then(|| namespace_resolv_conf_placeholder(&d.resolv_conf_path()))
        .and_then(|made| {
            made.map_err(|e| {
                tracing::warn!(
                    "resolv.conf for {}: {e}; tailscaled starts without it (it sees the node's)",
                    netns_path.display()
                )
            })
            .ok()
        });
    let mut child = in_namespace(&d.tailscaled, &args, &netns, resolv.as_deref())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", d.tailscaled.display()))?;
    log_output("tailscaled", &mut child);
    Ok(child)
}

/// How the supervised tailscaled logs in.
enum AuthKey {
    /// The operator's key file (one key for many nodes).
    File(PathBuf),
    /// A single-use key the daemon mints with `[headscale]`'s API key, for
    /// this node alone, only when tailscaled needs to log in.
    Mint(crate::spec::HeadscaleConfig),
}

/// A minted key is used at once: an hour is plenty and a lost one dies soon.
const MINTED_KEY_LIFETIME: Duration = Duration::from_secs(3600);

/// tailscaled's state once it has read it (not `NoState`), within 10 s.
async fn settled_backend_state(spec: &Spec) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (tailscale, socket) = (spec.daemon.tailscale.clone(), socket_path(spec));
        let state = tokio::task::spawn_blocking(move || {
            crate::headscale::tailscaled::status(&tailscale, &socket, Duration::from_secs(5))
                .map(|s| s.backend_state)
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        if (!state.is_empty() && state != "NoState") || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A task aborted when dropped (a login belongs to one tailscaled's run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A minted key's file, removed when the login that used it is done or
/// aborted.
struct MintedKey(PathBuf);

impl Drop for MintedKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const MINTED_KEY_PREFIX: &str = "minted-authkey";

fn remove_minted_keys(spec: &Spec) {
    let dir = spec.state_dir.join("tailscaled");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(MINTED_KEY_PREFIX)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Mints a single-use pre-auth key into a root-only file of its own in
/// tailscaled's state dir (handed over as `file:`).
async fn mint_key(spec: &Spec, config: crate::spec::HeadscaleConfig) -> Result<MintedKey, String> {
    let user = config.user.clone().unwrap_or_default();
    let key = tokio::task::spawn_blocking(move || {
        let client = crate::headscale::Client::new(&config)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        client.create_pre_auth_key(&user, &config.tags, now, MINTED_KEY_LIFETIME)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| crate::Chain(&e).to_string())?;
    static MINTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MINTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = spec
        .state_dir
        .join("tailscaled")
        .join(format!("{MINTED_KEY_PREFIX}-{}-{n}", std::process::id()));
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let minted = MintedKey(path);
    f.write_all(key.as_bytes())
        .map_err(|e| format!("{}: {e}", minted.0.display()))?;
    Ok(minted)
}

/// How long one `tailscale up` may take before it is tried again.
const UP_TIMEOUT: Duration = Duration::from_secs(60);

/// `tailscale up` once tailscaled's socket is there, tried again with
/// backoff until it works (Headscale down at boot is "not yet", not
/// "never"); aborted with this tailscaled's run.
async fn log_in(spec: &Spec, netns_path: &Path, server: &str, key: AuthKey) {
    let socket = socket_path(spec);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            tracing::error!(
                "tailscaled did not open {} within 30 s; not logging in",
                socket.display()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match try_log_in(spec, netns_path, server, &key).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!("{e}; trying again in {:.1} s", delay.as_secs_f64());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn try_log_in(
    spec: &Spec,
    netns_path: &Path,
    server: &str,
    key: &AuthKey,
) -> Result<(), String> {
    let netns =
        std::fs::File::open(netns_path).map_err(|e| format!("{}: {e}", netns_path.display()))?;
    // Held until `up` is done: its Drop removes the file.
    let mut minted = None;
    let file = match key {
        AuthKey::File(file) => Some(file.clone()),
        AuthKey::Mint(config) => {
            let state = settled_backend_state(spec).await;
            if state == "NeedsLogin" || state.is_empty() || state == "NoState" {
                let key = mint_key(spec, config.clone())
                    .await
                    .map_err(|e| format!("cannot mint a pre-auth key at Headscale: {e}"))?;
                tracing::info!("minted a single-use pre-auth key at Headscale for this node");
                let path = key.0.clone();
                minted = Some(key);
                Some(path)
            } else {
                // Logged in already (its state dir): no key needed, none spent.
                None
            }
        }
    };
    let args = up_args(spec, server, file.as_deref());
    // The key itself never reaches a log: only its path is in the arguments.
    tracing::info!("{} {}", spec.daemon.tailscale.display(), args.join(" "));
    let mut child = in_namespace(&spec.daemon.tailscale, &args, &netns, None)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", spec.daemon.tailscale.display()))?;
    log_output("tailscale up", &mut child);
    let result = match tokio::time::timeout(UP_TIMEOUT, child.wait()).await {
        Ok(Ok(s)) if s.success() => {
            tracing::info!("tailscale up: logged in to {server}");
            Ok(())
        }
        Ok(Ok(s)) => Err(format!("tailscale up failed: {s}")),
        Ok(Err(e)) => Err(format!("tailscale up: {e}")),
        Err(_) => Err(format!("tailscale up did not finish in {UP_TIMEOUT:?}")),
    };
    drop(minted);
    result
}

/// SIGTERM, then SIGKILL after five seconds.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The namespace's resolv.conf path, made (empty but for headcni's mark)
/// when the reconcile loop has not written it yet.
fn namespace_resolv_conf_placeholder(path: &Path) -> std::io::Result<PathBuf> {
    // As the reconcile loop: only a regular file of ours, never followed.
    if !crate::kernel::files::bindable_regular_file(path)? {
        let text = format!(
            "{} (filled in by the reconcile loop)\n",
            crate::model::FILE_MARK
        );
        crate::kernel::files::write_in_place(path, &text)?;
    }
    Ok(path.to_path_buf())
}

/// A number in [0, 1) for backoff jitter, from std's per-process random
/// hash keys (a random-number crate for one number is not worth it).
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::plain_http_advice;

    #[test]
    fn plain_http_is_advised_against_unless_private() {
        for public in [
            "http://headscale.example.com",
            "http://192.0.2.2:8080",
            "http://[2001:db8::1]:8080/",
        ] {
            assert!(plain_http_advice(public).is_some(), "{public}");
        }
        for fine in [
            "https://192.0.2.2",
            "http://10.0.0.5:8080",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[fd00::5]:8080",
        ] {
            assert!(plain_http_advice(fine).is_none(), "{fine}");
        }
    }
}
