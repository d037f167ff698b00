//! The stand-in's WireGuard mode (`--wg-config=FILE`): a real data plane.
//! wireguard-go (the engine tailscaled embeds) runs on the interface named
//! by `--tun`; peers come from a static file, as a control server would hand
//! them out:
//!
//! ```text
//! address 100.64.0.1
//! address fd7a:115c:a1e0::1
//! private-key-file /path/key
//! peer PUBKEY endpoint 198.51.100.2:41641 allowed 100.64.0.5/32 routes 10.244.1.0/24
//! ```
//!
//! As tailscaled does, it sends nothing until logged in (`tailscale up` has
//! run: its arguments appear beside the socket), puts a peer's approved
//! routes into that peer's allowed IPs (and the routing table) only with
//! `--accept-routes`, and routes the tailnet through table 52. With
//! `--peer` (a tailnet peer that is not a headcni node) it configures at
//! once and routes in the main table.
//!
//! wireguard-go's control socket is /run/wireguard/NAME.sock: each instance
//! gets a private mount namespace with a tmpfs there, so several `wg0` can
//! run on one machine.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Peer {
    key: String,
    endpoint: Option<String>,
    allowed: Vec<String>,
    routes: Vec<String>,
}

struct Config {
    /// The node's tailnet addresses: IPv4, and IPv6 too in a dual-stack lab.
    addresses: Vec<String>,
    key_file: String,
    peers: Vec<Peer>,
}

fn parse(text: &str) -> Config {
    let mut config = Config {
        addresses: Vec::new(),
        key_file: String::new(),
        peers: Vec::new(),
    };
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["address", a] => config.addresses.push(a.to_string()),
            ["private-key-file", f] => config.key_file = f.to_string(),
            ["peer", key, rest @ ..] => {
                let mut peer = Peer {
                    key: key.to_string(),
                    endpoint: None,
                    allowed: Vec::new(),
                    routes: Vec::new(),
                };
                for pair in rest.chunks(2) {
                    match pair {
                        ["endpoint", e] => peer.endpoint = Some(e.to_string()),
                        ["allowed", a] => peer.allowed.extend(a.split(',').map(str::to_string)),
                        ["routes", r] => peer.routes.extend(r.split(',').map(str::to_string)),
                        other => panic!("wg config: unknown {other:?}"),
                    }
                }
                config.peers.push(peer);
            }
            other => panic!("wg config: unknown line {other:?}"),
        }
    }
    config
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mount namespace of this process's own, with a private /run/wireguard.
fn private_wireguard_dir() {
    // SAFETY: plain syscalls on this process; no memory is shared.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let none = c"none".as_ptr();
        let root = c"/".as_ptr();
        assert_eq!(
            libc::mount(
                none,
                root,
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
        std::fs::create_dir_all("/run/wireguard").expect("/run/wireguard");
        let dir = c"/run/wireguard".as_ptr();
        assert_eq!(
            libc::mount(
                c"tmpfs".as_ptr(),
                dir,
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null()
            ),
            0,
            "mount tmpfs: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn start_wireguard_go(name: &str) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("wireguard-go");
    // Its stderr carries only a banner about the kernel's WireGuard (not
    // the point here: wireguard-go is what tailscaled embeds); a failure to
    // start shows as the missing socket below.
    cmd.args(["-f", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl in the forked child: the engine dies with the stand-in,
    // as tailscaled's does with tailscaled.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .expect("wireguard-go (apt install wireguard-go)");
    let socket = format!("/run/wireguard/{name}.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&socket).exists() {
        assert!(
            Instant::now() < deadline,
            "wireguard-go did not open {socket}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Runs the WireGuard stand-in until killed.
pub fn main(name: &str, port: &str, config_file: &str, socket: &str, peer_mode: bool) -> ! {
    let config = parse(&std::fs::read_to_string(config_file).expect("wg config"));
    private_wireguard_dir();
    let mut engine = start_wireguard_go(name);
    for address in &config.addresses {
        let host = if address.contains(':') { 128 } else { 32 };
        // No duplicate address detection, as tailscaled's own addresses.
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{address}/{host}"),
            "dev",
            name,
        ]
        .into_iter()
        .chain(address.contains(':').then_some("nodad"))
        .collect::<Vec<_>>());
    }
    run(&["ip", "link", "set", name, "mtu", "1280", "up"]);
    let _ = std::fs::remove_file(socket);
    let _listener = std::os::unix::net::UnixListener::bind(socket).expect("socket");
    println!(
        "stand-in tailscaled (wireguard): {name} {} port {port}",
        config.addresses.join(" ")
    );

    // Logged in? (`tailscale up` leaves its arguments beside the socket.)
    let up_args = format!("{socket}.up.args");
    let accept_routes = if peer_mode {
        true
    } else {
        while !Path::new(&up_args).exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&up_args)
            .unwrap_or_default()
            .lines()
            .any(|a| a == "--accept-routes" || a == "--accept-routes=true")
    };
    let table = if peer_mode { "main" } else { "52" };
    let mut wg: Vec<String> = [
        "wg",
        "set",
        name,
        "private-key",
        &config.key_file,
        "listen-port",
        port,
    ]
    .map(str::to_string)
    .to_vec();
    for peer in &config.peers {
        let mut allowed = peer.allowed.clone();
        if accept_routes {
            allowed.extend(peer.routes.iter().cloned());
        }
        wg.extend([
            "peer".into(),
            peer.key.clone(),
            "allowed-ips".into(),
            allowed.join(","),
        ]);
        if let Some(e) = &peer.endpoint {
            wg.extend([
                "endpoint".into(),
                e.clone(),
                "persistent-keepalive".into(),
                "5".into(),
            ]);
        }
        for dst in &allowed {
            run(&["ip", "route", "replace", dst, "dev", name, "table", table]);
        }
    }
    let wg: Vec<&str> = wg.iter().map(String::as_str).collect();
    run(&wg);
    if !peer_mode {
        // As tailscaled: the tailnet (both families) through table 52,
        // looked up early.
        for (family, tailnet) in [("-4", "100.64.0.0/10"), ("-6", "fd7a:115c:a1e0::/48")] {
            run(&[
                "ip", "route", "replace", tailnet, "dev", name, "table", "52",
            ]);
            // (A restarted instance finds the rule of the one before.)
            let rules = Command::new("ip")
                .args([family, "rule", "show", "pref", "5270"])
                .output()
                .expect("ip rule");
            if rules.stdout.is_empty() {
                run(&["ip", family, "rule", "add", "pref", "5270", "table", "52"]);
            }
        }
    }
    let status = engine.wait();
    panic!("wireguard-go ended: {status:?}");
}
