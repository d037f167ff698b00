//! The real tailnet lab: real Headscale and real tailscaled (the versions in
//! scripts/tailnet-versions, built by scripts/deps.sh) in throwaway
//! namespaces beside the WireGuard lab's (tests/tailnet), sharing its Lab
//! and cleanup.
//!
//! Nothing of it runs in the machine's own namespace or reaches past the
//! lab: Headscale listens on a documentation address in a namespace of its
//! own, over TLS with a certificate the test makes (trusted through
//! SSL_CERT_FILE), with only its embedded DERP server (an IP literal), no
//! update checks, no logtail and no MagicDNS; every tailscaled runs with --no-logs-no-support, no port
//! mapper, and panics if it ever tries Tailscale's own control server. Each
//! tailscaled gets a resolv.conf of its own (/etc/netns/NS), so not even a
//! bug could make it write the machine's. Processes are killed and
//! namespaces removed on drop, also when a test fails; each process also
//! dies with the test thread that started it (PR_SET_PDEATHSIG).

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::common::{wait_until, Lab};

/// Headscale's address, in its own namespace behind "the internet".
pub const CONTROL_IP: &str = "192.0.2.2";
const CONTROL_GW: &str = "192.0.2.1";
/// TLS, as in production. Plain HTTP is what the issue first asked for, but
/// tailscale 1.98 dials an `http://` control URL of a public address over
/// HTTPS on port 443 whenever it redials within two minutes of its last
/// dial (control/ts2021/client.go, controlhttp's forceNoise443): a restarted
/// Headscale or tailscaled never reconnects. docs/daemon.md says so.
pub const CONTROL_PORT: u16 = 443;
const STUN_PORT: u16 = 3478;

/// The pinned versions, read from the file scripts/deps.sh builds them by.
fn version(name: &str) -> String {
    include_str!("../../scripts/tailnet-versions")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_version=")))
        .unwrap_or_else(|| panic!("{name}_version in scripts/tailnet-versions"))
        .trim()
        .to_string()
}

/// The real binaries (scripts/deps.sh; HEADCNI_TAILNET_DIR moves them).
pub struct Bins {
    pub tailscaled: PathBuf,
    pub tailscale: PathBuf,
    pub headscale: PathBuf,
}

pub fn bins() -> Bins {
    let dir = PathBuf::from(
        std::env::var_os("HEADCNI_TAILNET_DIR").unwrap_or_else(|| "/opt/headcni-ci/tailnet".into()),
    );
    let ts = dir.join(format!("tailscale-{}", version("tailscale")));
    let hs = dir.join(format!("headscale-{}", version("headscale")));
    let bins = Bins {
        tailscaled: ts.join("tailscaled"),
        tailscale: ts.join("tailscale"),
        headscale: hs.join("headscale"),
    };
    for b in [&bins.tailscaled, &bins.tailscale, &bins.headscale] {
        assert!(
            b.exists(),
            "{} is missing: `bash scripts/deps.sh` builds the real tailnet",
            b.display()
        );
    }
    bins
}

use crate::common::bounded;

/// The child dies with the thread that started it, whatever the test does.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches only this process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// What keeps tailscaled and the CLI inside the lab (tstest/integration
/// sets the same): no log uploads, no port mapping, no airplane-mode
/// pause, no Tailscale control server. [`Control::env`] adds trust in the
/// lab's certificate.
pub const QUIET_ENV: &[(&str, &str)] = &[
    ("TS_NO_LOGS_NO_SUPPORT", "true"),
    ("TS_DISABLE_PORTMAPPER", "1"),
    ("TS_ASSUME_NETWORK_UP_FOR_TEST", "1"),
    ("TS_PANIC_IF_HIT_MAIN_CONTROL", "1"),
];

/// A resolv.conf of its own for `ns` (what `ip netns exec` binds over
/// /etc/resolv.conf): tailscaled's DNS manager never sees the machine's.
/// The Lab removes /etc/netns/NS with the namespace.
pub fn private_resolv_conf(ns: &str) {
    let dir = Path::new("/etc/netns").join(ns);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("resolv.conf"),
        "# headcni test lab: no resolvers\n",
    )
    .unwrap();
}

/// Joins `ns` to "the internet" `inet`: `ip`/28 on its eth0, `gw` the
/// internet's end (`inet_if`) and `ns`'s default route.
pub fn join(lab: &Lab, inet: &str, ns: &str, inet_if: &str, ip: &str, gw: &str) {
    lab.veth_up(ns, "eth0", inet, inet_if);
    lab.ip(ns, &["addr", "add", &format!("{ip}/28"), "dev", "eth0"]);
    lab.ip(inet, &["addr", "add", &format!("{gw}/28"), "dev", inet_if]);
    lab.ip(ns, &["route", "add", "default", "via", gw]);
}

/// A real Headscale in a namespace of its own at [`CONTROL_IP`].
pub struct Control {
    pub ns: String,
    pub url: String,
    dir: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl Control {
    /// Starts Headscale with `policy` (HuJSON) on a new namespace joined to
    /// `inet`, and makes user `lab`.
    pub fn start(lab: &mut Lab, inet: &str, policy: &str) -> Control {
        let ns = lab.netns("ctrl");
        join(lab, inet, &ns, "to-ctrl", CONTROL_IP, CONTROL_GW);
        let dir = lab.dir.path().join("headscale");
        std::fs::create_dir_all(&dir).unwrap();
        let policy_file = dir.join("policy.hujson");
        std::fs::write(&policy_file, policy).unwrap();
        let url = format!("https://{CONTROL_IP}:{CONTROL_PORT}");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        crate::common::sh(&[
            "timeout",
            "20",
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=headcni-lab-headscale",
            "-addext",
            &format!("subjectAltName=IP:{CONTROL_IP}"),
            // A server certificate, not a CA: rustls (headcni's API calls)
            // refuses a CA certificate as the server's own; Go trusts it as
            // its own root either way.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let d = dir.display();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                r#"server_url: {url}
listen_addr: {CONTROL_IP}:{CONTROL_PORT}
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
noise:
  private_key_path: {d}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: lab
    region_name: Lab DERP
    stun_listen_addr: {CONTROL_IP}:{STUN_PORT}
    private_key_path: {d}/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: {CONTROL_IP}
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
tls_cert_path: {cert}
tls_key_path: {key}
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
    write_ahead_log: true
log:
  level: info
policy:
  mode: file
  path: {policy}
dns:
  magic_dns: false
  override_local_dns: false
  base_domain: lab.test
  nameservers:
    global: []
unix_socket: {d}/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
"#,
                policy = policy_file.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let mut control = Control {
            ns,
            url,
            dir,
            config,
            bin: bins().headscale,
            child: None,
        };
        control.spawn();
        control.cli(&["users", "create", "lab"]);
        control
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("headscale.log"))
            .unwrap();
        // long-running: killed by Control's Drop.
        let child = die_with_parent(
            Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .arg(&self.bin)
                .arg("-c")
                .arg(&self.config)
                .arg("serve")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .spawn()
        .expect("headscale");
        self.child = Some(child);
        wait_until(Duration::from_secs(30), "Headscale to answer", || {
            self.try_cli(&["users", "list"]).status.success()
        });
    }

    /// What every tailscaled of the lab needs beside [`QUIET_ENV`]: trust in
    /// this server's certificate.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "SSL_CERT_FILE".into(),
            self.dir.join("cert.pem").display().to_string(),
        )]
    }

    /// Starts a stopped Headscale again on the same database.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// The certificate Headscale serves (for a client's CA file).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// A new API key, in a root-only file in `dir` (mode 0400).
    pub fn api_key_file(&self, dir: &Path) -> PathBuf {
        let key = self.cli(&["apikeys", "create", "--expiration", "1h"]);
        let key = key.as_str().expect("an API key").to_string();
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("headscale-api-key");
        std::fs::write(&file, key).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        file
    }

    /// The Headscale id of the node named `hostname`.
    pub fn node_id(&self, hostname: &str) -> Option<u64> {
        self.nodes()
            .iter()
            .find(|n| n["given_name"] == hostname || n["name"] == hostname)
            .and_then(|n| n["id"].as_u64().or_else(|| n["id"].as_str()?.parse().ok()))
    }

    /// Sets the node's approved routes by hand (`""`: none), as an operator would.
    pub fn set_approved(&self, hostname: &str, routes: &str) {
        let id = self
            .node_id(hostname)
            .unwrap_or_else(|| panic!("{hostname} in {:#?}", self.nodes()));
        self.cli(&[
            "nodes",
            "approve-routes",
            "--identifier",
            &id.to_string(),
            "--routes",
            routes,
        ]);
    }

    /// Stops Headscale (SIGTERM) and starts it again on the same database.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops Headscale (SIGTERM) until [`Control::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..500 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("headscale.log")).unwrap_or_default()
    }

    fn try_cli(&self, args: &[&str]) -> Output {
        bounded(Duration::from_secs(20))
            .args(["ip", "netns", "exec", &self.ns])
            .arg(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("headscale CLI")
    }

    /// The real CLI, its JSON answer; it must succeed.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = self.try_cli(args);
        assert!(
            out.status.success(),
            "headscale {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// A reusable pre-auth key of user `lab`, in a root-only file in `dir`.
    pub fn auth_key_file(&self, dir: &Path) -> PathBuf {
        let users = self.cli(&["users", "list"]);
        let id = users
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == "lab"))
            .and_then(|u| u["id"].as_u64().or_else(|| u["id"].as_str()?.parse().ok()))
            .unwrap_or_else(|| panic!("user lab in {users}"));
        let key = self.cli(&[
            "preauthkeys",
            "create",
            "--user",
            &id.to_string(),
            "--reusable",
            "--expiration",
            "1h",
        ]);
        let key = key["key"].as_str().expect("a key").to_string();
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("authkey");
        std::fs::write(&file, key).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        file
    }

    /// `headscale nodes list`.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        self.cli(&["nodes", "list"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The routes Headscale approved for the node named `hostname`.
    pub fn approved_routes(&self, hostname: &str) -> Vec<String> {
        self.nodes()
            .iter()
            .find(|n| n["given_name"] == hostname || n["name"] == hostname)
            .and_then(|n| n["approved_routes"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A policy that lets every node reach every other and approves, with no
/// operator step, any route of user `lab`'s nodes inside `routes`.
pub fn policy(routes: &[&str]) -> String {
    let approvers: Vec<String> = routes
        .iter()
        .map(|r| format!("\"{r}\": [\"lab@\"]"))
        .collect();
    format!(
        "{{\n  \"acls\": [{{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}}],\n  \"autoApprovers\": {{\"routes\": {{{}}}}}\n}}\n",
        approvers.join(", ")
    )
}

/// A real tailscaled in namespace `ns` (a peer, or a host-mode node's own).
pub struct Tailscaled {
    pub ns: String,
    pub name: String,
    dir: PathBuf,
    socket: PathBuf,
    tun: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Tailscaled {
    /// Starts tailscaled on TUN `tun` with its own state, socket and log in
    /// `lab`'s dir; `env` adds to [`QUIET_ENV`].
    pub fn start(
        lab: &Lab,
        control: &Control,
        ns: &str,
        name: &str,
        tun: &str,
        env: &[(&str, &str)],
    ) -> Tailscaled {
        let dir = lab.dir.path().join(format!("ts-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        private_resolv_conf(ns);
        let mut ts = Tailscaled {
            ns: ns.to_string(),
            name: name.to_string(),
            socket: dir.join("tailscaled.sock"),
            dir,
            tun: tun.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain(control.env())
                .collect(),
            child: None,
        };
        ts.spawn();
        ts
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tailscaled.log"))
            .unwrap();
        // long-running: killed by Tailscaled's Drop.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(bins().tailscaled)
            .arg(format!("--tun={}", self.tun))
            .arg(format!("--statedir={}", self.dir.join("state").display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg("--port=41641")
            .arg("--no-logs-no-support")
            .env("TS_LOGS_DIR", &self.dir)
            .envs(QUIET_ENV.iter().copied())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(die_with_parent(&mut cmd).spawn().expect("tailscaled"));
        wait_until(Duration::from_secs(20), "tailscaled's socket", || {
            self.socket.exists()
        });
    }

    /// Kills tailscaled outright and starts it again on the same state.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tailscaled.log")).unwrap_or_default()
    }

    /// The real CLI against this tailscaled, in its namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        bounded(Duration::from_secs(60))
            .args(["ip", "netns", "exec", &self.ns])
            .arg(bins().tailscale)
            .arg(format!("--socket={}", self.socket.display()))
            .args(args)
            .envs(QUIET_ENV.iter().copied())
            .output()
            .expect("tailscale CLI")
    }

    /// `tailscale up` against `control` with a pre-auth key; it must log in.
    pub fn up(&self, control: &Control, key: &Path, flags: &[&str]) {
        let server = format!("--login-server={}", control.url);
        let key = format!("--auth-key=file:{}", key.display());
        let hostname = format!("--hostname={}", self.name);
        let mut args = vec![
            "up",
            &server,
            &key,
            &hostname,
            "--accept-dns=false",
            "--timeout=45s",
        ];
        args.extend_from_slice(flags);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "tailscale up ({}): {}{}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// `tailscale status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// This node's tailnet address of the family (`tailscale ip`).
    pub fn ip(&self, ipv6: bool) -> String {
        let out = self.cli(&["ip", if ipv6 { "-6" } else { "-4" }]);
        assert!(out.status.success(), "tailscale ip: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A `tailscale` for headcni to run (`[daemon] tailscale`): the real
    /// CLI, told this tailscaled's socket.
    pub fn cli_wrapper(&self) -> PathBuf {
        let file = self.dir.join("tailscale");
        std::fs::write(
            &file,
            format!(
                "#!/bin/sh\nexec {} --socket={} \"$@\"\n",
                bins().tailscale.display(),
                self.socket.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        file
    }

    /// Waits until this node has a route to `prefix` from a peer (table 52
    /// holds what tailscaled accepted).
    pub fn wait_for_route(&self, prefix: &str) {
        wait_until(
            Duration::from_secs(30),
            &format!("{} to accept a route to {prefix}", self.name),
            || {
                let family = if prefix.contains(':') { "-6" } else { "-4" };
                bounded(Duration::from_secs(10))
                    .args(["ip", "-n", &self.ns, family, "route", "show", "table", "52"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(prefix))
            },
        );
    }
}

impl Drop for Tailscaled {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child; tailscaled cleans its rules up.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..300 {
                if let Some(c) = self.child.as_mut() {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        self.child = None;
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }
}

/// Pings `target` from namespace `ns` until it answers (a path through a
/// real tailnet comes up over a few seconds: netmap, handshake).
/// `context()` is shown if it never does.
pub fn wait_ping(ns: &str, target: &str, what: &str, context: impl Fn() -> String) {
    wait_for(
        Duration::from_secs(30),
        what,
        || {
            bounded(Duration::from_secs(10))
                .args(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", target])
                .output()
                .is_ok_and(|o| o.status.success())
        },
        context,
    );
}

/// A daemon-mode node's spec in `dir`: the real tailscaled and CLI, logged
/// in to `control` with `key`, in tailnet namespace `ts`; `pod_lines` go
/// under `[pod_network]`, `daemon_extra` under `[daemon]`.
pub fn daemon_spec(
    dir: &Path,
    ts: &str,
    pod_lines: &str,
    daemon_extra: &str,
    control: &Control,
    key: &Path,
) -> PathBuf {
    let bins = bins();
    let spec = dir.join("headcni.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"daemon\"\nstate_dir = \"{state}\"\n\n[pod_network]\n{pod_lines}\n\n[daemon]\ntailscaled = \"{tsd}\"\ntailscale = \"{tsc}\"\nlogin_server = \"{url}\"\nauth_key_file = \"{key}\"\nnetns = \"{ts}\"\nresync_seconds = 30\n{daemon_extra}\n",
            state = dir.join("state").display(),
            tsd = bins.tailscaled.display(),
            tsc = bins.tailscale.display(),
            url = control.url,
            key = key.display(),
        ),
    )
    .unwrap();
    spec
}

/// `headcni daemon` in namespace `node` with `spec`, its log in
/// `dir/daemon.log`; `env` adds to [`QUIET_ENV`] (its tailscaled inherits
/// both).
pub fn start_daemon(
    node: &str,
    spec: &Path,
    dir: &Path,
    control: &Control,
    env: &[(&str, &str)],
) -> Child {
    private_resolv_conf(node);
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    // long-running: the caller's guard kills it.
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        node,
        crate::common::headcni_bin(),
        "daemon",
    ])
    .env("HEADCNI_SPEC", spec)
    .env("TS_LOGS_DIR", dir)
    // As on a node: tailscaled must find a network it can use without the
    // test knob that assumes one.
    .envs(
        QUIET_ENV
            .iter()
            .copied()
            .filter(|(k, _)| *k != "TS_ASSUME_NETWORK_UP_FOR_TEST"),
    )
    .envs(control.env())
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    die_with_parent(&mut cmd).spawn().expect("headcni daemon")
}

/// [`wait_until`] that shows `context()` (logs) when time runs out.
pub fn wait_for(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `headcni status --format json` of the daemon in `node`.
pub fn daemon_status(node: &str, spec: &Path) -> Option<serde_json::Value> {
    let out = bounded(Duration::from_secs(10))
        .args(["ip", "netns", "exec", node, crate::common::headcni_bin()])
        .args(["status", "--format", "json"])
        .env("HEADCNI_SPEC", spec)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}
