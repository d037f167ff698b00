//! A stand-in for tailscaled and `tailscale up`, for tests: no tailscaled or
//! Headscale can be installed where the tests run. It keeps the contract
//! headcni relies on and nothing more:
//!
//! - as tailscaled (`--tun=NAME --statedir=DIR --socket=PATH --port=N ...`):
//!   creates the TUN named by `--tun` in its namespace, gives it a 100.64.x
//!   address, listens on `--socket`, and runs until killed; the TUN goes
//!   with the process (it is not persistent).
//! - as `tailscale --socket=PATH up ...`: records its arguments next to the
//!   socket (`up.args`) and exits 0.
//! - with `--wg-config=FILE`: a real WireGuard data plane (wireguard.rs).

use std::os::fd::AsRawFd;
use std::process::Command;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
        .or_else(|| {
            let long = format!("--{name}");
            args.iter()
                .position(|a| *a == long)
                .and_then(|i| args.get(i + 1).cloned())
        })
}

mod wireguard;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "up") {
        let socket = flag(&args, "socket").expect("--socket");
        // Whole or not at all: a test waits for the file and reads it at once.
        let tmp = format!("{socket}.up.args.tmp");
        std::fs::write(&tmp, args.join("\n")).expect("record args");
        std::fs::rename(&tmp, format!("{socket}.up.args")).expect("record args");
        return;
    }
    let name = flag(&args, "tun").expect("--tun");
    let socket = flag(&args, "socket").expect("--socket");
    // A test that fails may kill the daemon outright: the stand-in goes with
    // it, or its mount namespace would keep the test's namespaces pinned.
    // SAFETY: prctl on this process only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Some(config) = flag(&args, "wg-config") {
        let port = flag(&args, "port").unwrap_or_else(|| "41641".into());
        let peer = args.iter().any(|a| a == "--peer");
        wireguard::main(&name, &port, &config, &socket, peer);
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF takes a pointer to a struct ifreq, which IfReq lays out.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    let last = std::process::id() % 250 + 2;
    let ok = Command::new("ip")
        .args(["addr", "add", &format!("100.64.0.{last}/32"), "dev", &name])
        .status()
        .map(|s| s.success());
    assert_eq!(ok.ok(), Some(true), "ip addr add");
    let _ = std::fs::remove_file(&socket);
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
    println!("stand-in tailscaled: {name} up, socket {socket}");
    loop {
        std::thread::park();
    }
}
