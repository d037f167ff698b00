//! Findings of a probe as an attacker and a careless operator would make
//! them: each is fixed, and each test here failed before its fix.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{run_plugin, CniCall, Lab, Node};
use serde_json::json;

/// A pipe whose reading end is already closed: writing to it fails (EPIPE).
fn closed_stdout() -> Stdio {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    drop(read);
    Stdio::from(write)
}

#[test]
fn a_closed_stdout_ends_the_output_not_the_process() {
    let mut n = Node::new();
    n.add_pod("a");
    for args in [
        &["pod", "list"][..],
        &["plan"],
        &["apply"],
        &["validate"],
        &["observe"],
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &n.node, common::headcni_bin()])
            .args(args)
            .env("HEADCNI_SPEC", &n.spec)
            .stdout(closed_stdout())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
    assert_eq!(n.owned_links().len(), 1, "apply did its work");
    // A CNI ADD whose runtime stopped reading: the pod is wired, no panic.
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let out = Command::new("ip")
        .args(["netns", "exec", &n.node, common::headcni_bin()])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &b)
        .env("CNI_NETNS", &path)
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(closed_stdout())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(n.cni_conf("1.1.0").to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(n.owned_links().len(), 2);
}

/// STATUS and ADD agree on whether an address is left, and every address
/// the CIDR counts can be had, the one freed last included.
#[test]
fn status_and_add_agree_on_the_pool() {
    let n = Node::new();
    let spec = n.lab.dir.path().join("small.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.250.0.0/29\"\n[tailnet]\ninterface = \"tailscale0\"\n",
            n.lab.dir.path().join("small-state").display()
        ),
    )
    .unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "headcni", "type": "headcni", "spec": spec});
    let cni = |command, id: Option<&str>, netns: Option<&str>| {
        let call = CniCall {
            command,
            container_id: id,
            netns,
            ifname: Some("eth0"),
        };
        run_plugin(&n.node, common::headcni_bin(), &call, &conf.to_string())
    };
    let mut lab = Lab::new();
    let pods: Vec<String> = (0..6).map(|i| lab.netns(&format!("p{i}"))).collect();
    let path = |ns: &str| Lab::ns_path(ns).to_str().unwrap().to_string();
    for ns in &pods[..5] {
        assert_eq!(
            cni("STATUS", None, None).code,
            0,
            "ready while addresses are left"
        );
        let out = cni("ADD", Some(ns), Some(&path(ns)));
        assert_eq!(out.code, 0, "{}", out.stdout);
    }
    let status = cni("STATUS", None, None);
    assert_eq!(
        status.json["code"], 50,
        "not ready when full: {}",
        status.stdout
    );
    let full = cni("ADD", Some(&pods[5]), Some(&path(&pods[5])));
    assert_eq!(full.json["code"], 101, "{}", full.stdout);
    // Free one: STATUS says ready, and ADD gets exactly that address.
    let out = cni("DEL", Some(&pods[2]), Some(&path(&pods[2])));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(cni("STATUS", None, None).code, 0);
    let out = cni("ADD", Some(&pods[5]), Some(&path(&pods[5])));
    assert_eq!(
        out.code, 0,
        "ready meant an address was left: {}",
        out.stdout
    );
    for ns in &pods {
        cni("DEL", Some(ns), Some(&path(ns)));
    }
}

/// The uplink named as the tailnet interface is refused: no tailnet route,
/// rp_filter or MSS clamping lands on it.
#[test]
fn the_uplink_is_not_taken_for_the_tailnet_interface() {
    let mut n = Node::new();
    n.add_pod("a");
    let spec = std::fs::read_to_string(&n.spec)
        .unwrap()
        .replace("interface = \"tailscale0\"", "interface = \"eth0\"");
    std::fs::write(&n.spec, spec).unwrap();
    let rp_before = n.in_node(&["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"]);
    let plan = n.headcni_ok(&["plan"], 0);
    assert!(plan.contains("carries the node's default route"), "{plan}");
    n.headcni(&["apply"]);
    assert!(
        !n.node_routes().contains("100.64.0.0/10 dev eth0"),
        "no tailnet route on the uplink: {}",
        n.node_routes()
    );
    assert_eq!(
        n.in_node(&["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"]),
        rp_before
    );
    let tables = n.in_node(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("headcni"),
        "no clamping on the uplink: {tables}"
    );
    assert_eq!(n.owned_links().len(), 1, "the pod is wired all the same");
}

#[test]
fn private_state_and_checked_inputs() {
    let mut n = Node::new();
    n.add_pod("a");
    n.headcni_ok(&["apply"], 0);
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    let state = n.lab.dir.path().join("state");
    assert_eq!(mode(&state), 0o700, "state_dir is root's alone");
    assert_eq!(mode(&state.join("pods.lock")), 0o600);

    // validate refuses an auth key the daemon would refuse.
    let key = n.lab.dir.path().join("authkey");
    std::fs::write(&key, "tskey-test").unwrap();
    common::sh(&["chmod", "644", key.to_str().unwrap()]);
    let spec = n.lab.dir.path().join("daemon.toml");
    std::fs::write(
        &spec,
        format!(
            "version = 1\nmode = \"daemon\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"10.244.0.0/24\"\n[daemon]\nlogin_server = \"https://headscale.example.test\"\nauth_key_file = \"{}\"\n",
            state.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = common::headcni_in(&n.node, &spec, &["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth_key_file") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    // logFile never follows a symlink to somewhere else.
    let victim = n.lab.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = n.lab.dir.path().join("cni.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut conf = n.cni_conf("1.1.0");
    conf["logFile"] = json!(link);
    conf["logLevel"] = json!("debug");
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let out = n.cni(&CniCall::add(&b, &path), &conf);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(
        out.stderr.contains("logFile"),
        "says why it logs to stderr only: {}",
        out.stderr
    );
}

#[test]
fn a_pod_s_huge_interface_index_costs_the_node_nothing() {
    // A pod with CAP_NET_ADMIN picks its links' indexes; observing its
    // namespace once sized a vector by the largest (2^31-1: 32 GiB).
    let mut n = Node::new();
    let (pod, _ip) = n.add_pod("big");
    n.headcni_ok(&["apply"], 0);
    n.lab.ip(
        &pod,
        &[
            "link",
            "add",
            "name",
            "big0",
            "index",
            "2147483647",
            "type",
            "veth",
            "peer",
            "name",
            "big1",
        ],
    );
    let out = n.headcni_ok(&["observe", "--format", "json"], 0);
    assert!(out.contains("big0"), "{out}");
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
}

/// A pod with CAP_NET_ADMIN in its namespace adds another pod's address
/// (and one nobody has) to its eth0 and sends from them, IPv4 and IPv6, to
/// a tailnet peer and to a pod on the node: nothing spoofed arrives (the
/// tailnet's ACLs go by source address), the pod's own packets do, and
/// headcni's source check counted the drops. The tailnet peer is the
/// standard node's veth stand-in: no control plane is needed to show what
/// leaves the node.
#[test]
fn a_pod_cannot_send_as_another_pod_or_any_address() {
    let mut n = Node::new();
    // Dual stack: the peer also holds fd7a:115c:a1e0::5 behind tailscale0.
    std::fs::write(
        &n.spec,
        format!(
            "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n[pod_network]\ncidr = \"{}\"\ncidr6 = \"fd00:10:244::/64\"\n[tailnet]\ninterface = \"tailscale0\"\n",
            n.lab.dir.path().join("state").display(),
            common::POD_CIDR
        ),
    )
    .unwrap();
    n.lab.ip(
        &n.node,
        &[
            "addr",
            "add",
            "fd7a:115c:a1e0::1/128",
            "dev",
            "tailscale0",
            "nodad",
        ],
    );
    n.lab.ip(
        &n.peer,
        &[
            "addr",
            "add",
            "fd7a:115c:a1e0::5/128",
            "dev",
            "ts-peer",
            "nodad",
        ],
    );
    n.lab.ip(
        &n.peer,
        &[
            "-6",
            "route",
            "add",
            "fd7a:115c:a1e0::1/128",
            "dev",
            "ts-peer",
        ],
    );
    let ips = common::result_ips;
    let (attacker, victim, target) = (
        n.lab.netns("evil"),
        n.lab.netns("victim"),
        n.lab.netns("target"),
    );
    let attacker_ips = ips(&n.cni_add(&attacker));
    let victim_ips = ips(&n.cni_add(&victim));
    let target_ips = ips(&n.cni_add(&target));
    // The node-wide table comes with the node's pass (the daemon's, here
    // `apply`'s), as on a node where headcni runs.
    n.headcni_ok(&["apply"], 0);
    assert_eq!(attacker_ips.len(), 2, "dual stack: {attacker_ips:?}");
    // The attacker takes the victim's addresses and two nobody holds.
    let spoofed: Vec<String> = victim_ips
        .iter()
        .cloned()
        .chain([
            "10.244.0.200".to_string(),
            "198.51.100.77".to_string(),
            "fd00:10:244::dead".to_string(),
            "2001:db8::77".to_string(),
        ])
        .collect();
    for ip in &spoofed {
        let len = if ip.contains(':') { 128 } else { 32 };
        n.lab.ip(
            &attacker,
            &[
                "addr",
                "add",
                &format!("{ip}/{len}"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
    }
    let receivers: Vec<_> = [
        (
            n.peer.clone(),
            vec!["100.64.0.5".to_string(), "fd7a:115c:a1e0::5".to_string()],
        ),
        (target.clone(), target_ips.clone()),
    ]
    .into_iter()
    .map(|(ns, dests)| {
        let socket = common::in_ns(&ns, || {
            let s = std::net::UdpSocket::bind("[::]:9999").unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            s
        })
        .join()
        .unwrap();
        (socket, dests)
    })
    .collect();
    let send = |from: &str, to: &str, payload: &'static [u8]| {
        let (from, to) = (from.to_string(), to.to_string());
        common::in_ns(&attacker, move || {
            let s =
                std::net::UdpSocket::bind((from.parse::<std::net::IpAddr>().unwrap(), 0)).unwrap();
            s.send_to(payload, (to.parse::<std::net::IpAddr>().unwrap(), 9999))
                .unwrap_or_else(|e| panic!("send from {from} to {to}: {e}"));
        })
        .join()
        .unwrap();
    };
    let family = |ip: &str| ip.contains(':');
    for (_, dests) in &receivers {
        for to in dests {
            for from in spoofed.iter().filter(|f| family(f) == family(to)) {
                send(from, to, b"spoofed");
            }
            // Sent last on the same path: once it is in, a spoofed packet
            // that got through would be in too.
            let own = attacker_ips
                .iter()
                .find(|a| family(a) == family(to))
                .unwrap();
            send(own, to, b"own");
        }
    }
    for (socket, dests) in &receivers {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.iter().filter(|(p, _)| p == "own").count() < dests.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "own packets missing; seen {seen:?}"
            );
            let mut buf = [0u8; 64];
            if let Ok((len, from)) = socket.recv_from(&mut buf) {
                let ip = match from.ip() {
                    std::net::IpAddr::V6(v6) => v6
                        .to_ipv4_mapped()
                        .map(std::net::IpAddr::V4)
                        .unwrap_or(std::net::IpAddr::V6(v6)),
                    v4 => v4,
                };
                seen.push((
                    String::from_utf8_lossy(&buf[..len]).into_owned(),
                    ip.to_string(),
                ));
            }
        }
        assert!(
            seen.iter()
                .all(|(p, from)| p == "own" && attacker_ips.contains(from)),
            "only the attacker's own address arrives at {dests:?}: {seen:?}\n{}",
            n.in_node(&["nft", "list", "ruleset"])
        );
    }
    let chain = n.in_node(&["nft", "list", "chain", "inet", "headcni", "pod_source"]);
    let drops: Vec<u64> = chain
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(
        drops.len() == 2 && drops.iter().all(|d| *d > 0),
        "both families counted drops:\n{chain}"
    );
}

/// Two container ids whose host-link names collide (40 bits of a hash: a
/// birthday search finds a pair in about a million tries).
fn colliding_ids() -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0u64.. {
        let id = format!("collide{i:016x}");
        let name = headcni::spec::host_link_name(&id, "eth0");
        if let Some(first) = seen.insert(name, id.clone()) {
            return (first, id);
        }
    }
    unreachable!("the search runs until it finds a pair")
}

/// The second of two colliding ids is rightly refused; the runtime's DEL
/// after that failed ADD (runtimes always DEL then) leaves the first pod's
/// veth alone, without the daemon and through it.
#[test]
fn a_del_after_a_refused_add_leaves_the_other_pod_alone() {
    let (first, second) = colliding_ids();
    let link = headcni::spec::host_link_name(&first, "eth0");
    for with_daemon in [false, true] {
        let mut n = Node::new();
        let _daemon = with_daemon.then(|| common::Daemon::start(&n));
        let (a, b) = (n.lab.netns("a"), n.lab.netns("b"));
        let (path_a, path_b) = (Lab::ns_path(&a), Lab::ns_path(&b));
        let call = CniCall::of;
        let conf = n.cni_conf("1.1.0");
        let out = n.cni(&call("ADD", &first, &path_a), &conf);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let ip = common::result_ips(&out.json)[0].clone();
        let out = n.cni(&call("ADD", &second, &path_b), &conf);
        assert_ne!(out.code, 0, "the colliding ADD is refused: {}", out.stdout);
        assert!(out.stdout.contains("collides"), "{}", out.stdout);
        let out = n.cni(&call("DEL", &second, &path_b), &conf);
        assert_eq!(
            out.code, 0,
            "DEL of the refused ADD succeeds: {}{}",
            out.stdout, out.stderr
        );
        assert!(
            n.owned_links().contains(&link),
            "daemon {with_daemon}: the first pod's veth {link} is still there: {:?}",
            n.owned_links()
        );
        assert!(
            n.lab.ping(&n.node, &ip),
            "daemon {with_daemon}: the first pod still answers"
        );
        let out = n.cni(&call("DEL", &first, &path_a), &conf);
        assert_eq!(out.code, 0, "{}", out.stdout);
        // Through the daemon its link goes in the daemon's next pass.
        common::wait_until(
            std::time::Duration::from_secs(10),
            "its own DEL removes it",
            || !n.owned_links().contains(&link),
        );
    }
}

/// A state_dir a non-root user made first (with a symlink planted where
/// root writes) is refused by every path that uses it, not only by
/// `validate`: the plugin, apply, plan and the daemon all name it, and the
/// file the symlink points to is left as it was.
#[test]
fn a_state_dir_someone_else_owns_is_refused_everywhere() {
    let mut n = Node::new();
    let state = n.lab.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let victim = n.lab.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("pods.changed")).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("pods.lock")).unwrap();
    // uid 65534 (nobody) made it and can change it at will.
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();

    let says_unsafe = |what: &str, text: &str| {
        assert!(
            text.contains("is not safe") && text.contains("owned by uid 65534"),
            "{what} refuses the state_dir and says why: {text}"
        );
    };
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let out = n.cni(&CniCall::add(&b, &path), &n.cni_conf("1.1.0"));
    assert_ne!(out.code, 0, "the plugin's ADD is refused: {}", out.stdout);
    says_unsafe("ADD", &out.stdout);
    for args in [&["apply"][..], &["plan"], &["pod", "list"]] {
        let out = n.headcni(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        says_unsafe(&format!("{args:?}"), &String::from_utf8_lossy(&out.stderr));
    }
    let out = daemon_that_should_exit(&n);
    assert_eq!(out.status.code(), Some(1), "the daemon exits at once");
    says_unsafe("the daemon", &String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(n.owned_links().is_empty(), "nothing was wired");

    // A group-writable one is refused as well; root's own 0700 works.
    std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
    common::sh(&["chmod", "770", state.to_str().unwrap()]);
    let out = n.headcni(&["apply"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("others can write it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::sh(&["chmod", "700", state.to_str().unwrap()]);
    // Even in root's own state_dir a symlink is never followed.
    let out = n.cni(&CniCall::add(&b, &path), &n.cni_conf("1.1.0"));
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("pods.lock"), "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

/// A daemon run that is expected to exit (at most 10 s: then 124).
fn daemon_that_should_exit(n: &Node) -> std::process::Output {
    Command::new("timeout")
        .args([
            "10",
            "ip",
            "netns",
            "exec",
            &n.node,
            common::headcni_bin(),
            "daemon",
        ])
        .env("HEADCNI_SPEC", &n.spec)
        .output()
        .unwrap()
}

/// A second daemon for the same state_dir exits at once, naming the first's
/// pid, and leaves the first one's sockets working.
#[test]
fn a_second_daemon_names_the_first_and_leaves_it_alone() {
    let mut n = Node::new();
    let first = common::Daemon::start(&n);
    let pid = first.pid().unwrap();
    let out = daemon_that_should_exit(&n);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the second exits: {stderr}");
    // `ip netns exec` runs headcni as its own child: the daemon's pid is the
    // child of the pid we started.
    let daemon_pid = daemon_pid(&n);
    assert!(
        stderr.contains(&format!("pid {daemon_pid}")),
        "names the first daemon (pid {daemon_pid}, started as {pid}): {stderr}"
    );
    assert!(
        common::status(&n).is_some(),
        "the first daemon still answers on its socket"
    );
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let out = n.cni(&CniCall::add(&b, &path), &n.cni_conf("1.1.0"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        common::status(&n).map(|s| s["cni_calls"].clone()),
        Some(json!(1)),
        "the first daemon took the ADD: {}",
        first.log()
    );
}

/// The headcni daemon's own pid (`ip netns exec` runs it as its child).
fn daemon_pid(n: &Node) -> i32 {
    let text = std::fs::read_to_string(n.lab.dir.path().join("state/daemon.lock")).unwrap();
    text.trim().parse().unwrap()
}

/// Resumes a stopped process when dropped, also when the test fails.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: signalling the test's own daemon.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Connections the daemon never accepts, until its listen backlog is full
/// (a connect would then wait).
fn fill_backlog(path: &Path) -> Vec<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let limit = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let (_, hard) = nix::sys::resource::getrlimit(limit).unwrap();
    nix::sys::resource::setrlimit(limit, hard.min(16384), hard).unwrap();
    let addr = UnixAddr::new(path).unwrap();
    let mut held = Vec::new();
    for _ in 0..8192 {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => held.push(fd),
            Err(nix::errno::Errno::EAGAIN) => return held,
            Err(e) => panic!("connect to {}: {e}", path.display()),
        }
    }
    panic!("the backlog of {} never filled", path.display());
}

/// A stopped daemon (SIGSTOP: as a stuck one looks from outside) costs a
/// CNI call its 10 s fallback budget, not for ever: with room in the
/// backlog the plugin's request waits unanswered, with the backlog full
/// its connect does; both ADDs fall back within 15 s and wire their pods.
/// Resumed, the daemon drops the call whose plugin stopped waiting rather
/// than doing the work a second time.
#[test]
fn a_stopped_daemon_costs_a_call_its_budget_not_for_ever() {
    let mut n = Node::new();
    let daemon = common::Daemon::start(&n);
    let pid = daemon_pid(&n);
    // SAFETY: signalling the test's own daemon.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let resume = Resume(pid);
    let conf = n.cni_conf("1.1.0");
    let socket = n.lab.dir.path().join("state/cni.sock");
    let mut add = |name: &str, says: &str| {
        let ns = n.lab.netns(name);
        let path = Lab::ns_path(&ns);
        let started = std::time::Instant::now();
        let out = n.cni(&CniCall::add(&ns, &path), &conf);
        let took = started.elapsed();
        assert_eq!(
            out.code, 0,
            "ADD {name} falls back: {}{}",
            out.stdout, out.stderr
        );
        assert!(
            took < std::time::Duration::from_secs(15),
            "ADD {name} took {took:?}"
        );
        assert!(out.stderr.contains(says), "ADD {name}: {}", out.stderr);
    };
    add("b", "no answer from the daemon");
    let fillers = fill_backlog(&socket);
    add("c", "did not take the connection");
    drop(fillers);
    drop(resume);
    daemon.wait_for_log(std::time::Duration::from_secs(20), "dropped 1 CNI calls");
    let status = common::status(&n).unwrap();
    assert_eq!(status["cni_calls"], json!(0), "{}", daemon.log());
    assert_eq!(n.owned_links().len(), 2, "both pods are wired");
}

/// A pod range that holds the node's own uplink address passes as a spec
/// (nothing in the file is wrong) but is refused on this node by apply,
/// plan and the plugin, naming the address; and special-purpose or
/// too-wide ranges are refused by `validate` with file, line and field.
#[test]
fn pod_ranges_that_would_take_the_node_s_traffic_are_refused() {
    let mut n = Node::new();
    let spec = std::fs::read_to_string(&n.spec).unwrap();
    std::fs::write(&n.spec, spec.replace(common::POD_CIDR, "203.0.113.0/24")).unwrap();
    for args in [&["apply"][..], &["plan"]] {
        let out = n.headcni(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            stderr.contains("pod_network.cidr 203.0.113.0/24 holds the node's own address 203.0.113.2/24 of eth0"),
            "{args:?}: {stderr}"
        );
    }
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let out = n.cni(&CniCall::add(&b, &path), &n.cni_conf("1.1.0"));
    assert_eq!(out.json["code"], json!(7), "{}", out.stdout);
    assert!(
        out.stdout.contains("203.0.113.2/24 of eth0"),
        "{}",
        out.stdout
    );
    assert!(n.owned_links().is_empty() && n.owned_routes().is_empty());
    // The node's way out is untouched.
    assert!(n.lab.ping(&n.node, "203.0.113.1"));

    for (cidr, says) in [("fe80::/64", "link-local"), ("::/1", "::/8")] {
        std::fs::write(
            &n.spec,
            spec.replace("cidr = \"10.244.0.0/24\"", &format!("cidr6 = \"{cidr}\"")),
        )
        .unwrap();
        let out = n.headcni(&["validate"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{cidr}");
        assert!(
            stderr.contains("headcni.toml:")
                && stderr.contains("pod_network.cidr6")
                && stderr.contains(says),
            "{cidr}: {stderr}"
        );
    }
}

/// A pod with CAP_NET_ADMIN renames its eth0 and makes a veth of its own
/// called eth0 with the same address and routes: the plan sees every
/// object as desired, and CHECK still says the pod is not wired, because
/// its eth0 is not the peer of the node's veth.
#[test]
fn check_sees_a_pod_s_own_fake_eth0() {
    let mut n = Node::new();
    let b = n.lab.netns("b");
    let path = Lab::ns_path(&b);
    let conf = n.cni_conf("1.1.0");
    let out = n.cni(&CniCall::add(&b, &path), &conf);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let ip = common::result_ips(&out.json)[0].clone();
    // The node-wide objects too (the firewall), so the plan below is empty.
    n.headcni_ok(&["apply"], 0);
    let check = CniCall {
        command: "CHECK",
        ..CniCall::add(&b, &path)
    };
    let out = n.cni(&check, &conf);
    assert_eq!(out.code, 0, "the real eth0 passes: {}", out.stdout);

    let routes = n.lab.ip(&b, &["-4", "route", "show", "dev", "eth0"]);
    for args in [
        vec!["link", "set", "eth0", "down"],
        vec!["link", "set", "eth0", "name", "eth9"],
        vec!["route", "flush", "dev", "eth9"],
        vec![
            "link", "add", "eth0", "type", "veth", "peer", "name", "fake1",
        ],
        vec!["addr", "add", &ip, "dev", "eth0"],
        vec!["link", "set", "fake1", "up"],
        vec!["link", "set", "eth0", "up"],
    ] {
        n.lab.ip(&b, &args);
    }
    // Link routes first, then the default route through them.
    let mut lines: Vec<&str> = routes.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.sort_by_key(|l| l.starts_with("default"));
    for line in lines {
        let mut args = vec!["route", "add"];
        args.extend(line.split_whitespace());
        args.extend(["dev", "eth0"]);
        n.lab.ip(&b, &args);
    }
    n.headcni_ok(&["plan", "--detailed-exitcode"], 0);
    let out = n.cni(&check, &conf);
    assert_eq!(out.json["code"], json!(103), "{}", out.stdout);
    assert!(
        out.stdout.contains("not the other end of the node's veth"),
        "{}",
        out.stdout
    );
}
