//! `headcni install` / `uninstall` into temporary directories, the conflist
//! it writes driving a real ADD, `--purge` in a throwaway node namespace,
//! and the node's pod CIDR from a stand-in API server (TLS, on the loopback
//! of a namespace of its own).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{headcni_bin, run_plugin, sh, wait_until, CniCall, Lab, Node};

/// Every path install writes, under one directory.
struct Target {
    root: PathBuf,
}

impl Target {
    fn new(root: &Path) -> Target {
        Target {
            root: root.to_path_buf(),
        }
    }
    fn bin(&self) -> PathBuf {
        self.root.join("opt/cni/bin")
    }
    fn conf(&self) -> PathBuf {
        self.root.join("etc/cni/net.d")
    }
    fn spec(&self) -> PathBuf {
        self.root.join("etc/headcni/headcni.toml")
    }
    fn protocols(&self) -> PathBuf {
        self.root.join("etc/iproute2/rt_protos.d")
    }
    fn record(&self) -> PathBuf {
        self.root.join("var/lib/headcni/install.json")
    }
    fn conflist(&self) -> PathBuf {
        self.conf().join("10-headcni.conflist")
    }
    fn install_args(&self) -> Vec<String> {
        vec![
            format!("--spec={}", self.spec().display()),
            "install".into(),
            format!("--cni-bin-dir={}", self.bin().display()),
            format!("--cni-conf-dir={}", self.conf().display()),
            format!("--protocols-dir={}", self.protocols().display()),
            format!("--record={}", self.record().display()),
        ]
    }
    fn uninstall_args(&self) -> Vec<String> {
        vec![
            format!("--spec={}", self.spec().display()),
            "uninstall".into(),
            format!("--record={}", self.record().display()),
        ]
    }
}

fn headcni(args: &[String]) -> Output {
    Command::new(headcni_bin())
        .args(args)
        .env_remove("HEADCNI_SPEC")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_is_idempotent_and_uninstall_removes_only_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let t = Target::new(dir.path());
    // Someone else's files beside ours.
    std::fs::create_dir_all(t.conf()).unwrap();
    std::fs::write(t.conf().join("05-other.conflist"), "{}").unwrap();
    std::fs::create_dir_all(t.bin()).unwrap();
    std::fs::write(t.bin().join("portmap"), "#!/bin/sh\n").unwrap();

    let first = ok(headcni(&t.install_args()));
    assert_eq!(first.matches("created").count(), 4, "{first}");
    let again = ok(headcni(&t.install_args()));
    assert_eq!(again.matches("unchanged").count(), 4, "{again}");

    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.conflist()).unwrap()).unwrap();
    assert_eq!(conflist["cniVersion"], "1.0.0");
    assert_eq!(conflist["cniVersions"][1], "1.1.0");
    assert_eq!(
        conflist["plugins"][1]["type"], "portmap",
        "portmap is there: chained"
    );
    assert_eq!(
        std::fs::read(t.bin().join("headcni")).unwrap(),
        std::fs::read(headcni_bin()).unwrap()
    );
    assert!(std::fs::read_to_string(t.protocols().join("headcni.conf"))
        .unwrap()
        .contains("104\theadcni"));
    assert!(t.spec().exists(), "a spec when there was none");

    // The spec an operator edits afterwards is theirs: uninstall keeps it.
    std::fs::write(t.spec(), "version = 1 # edited\n").unwrap();
    let out = ok(headcni(&t.uninstall_args()));
    assert!(out.contains("kept (changed since install)"), "{out}");
    assert!(!t.conflist().exists() && !t.bin().join("headcni").exists());
    assert!(!t.protocols().join("headcni.conf").exists());
    assert!(!t.record().exists());
    assert!(t.spec().exists());
    assert!(t.conf().join("05-other.conflist").exists());
    assert!(t.bin().join("portmap").exists());
}

#[test]
fn a_reader_never_sees_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = Target::new(dir.path());
    // Two "binaries" of different sizes, installed in turn (install copies
    // any file; a few MB keep twenty installs and the reader's loop quick,
    // where the 180 MB debug build took minutes).
    let a: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut b = a.clone();
    b.extend_from_slice(&[0u8; 4096]);
    let (a_path, b_path) = (dir.path().join("headcni-a"), dir.path().join("headcni-b"));
    std::fs::write(&a_path, &a).unwrap();
    std::fs::write(&b_path, &b).unwrap();
    let mut first = t.install_args();
    first.push(format!("--binary={}", a_path.display()));
    ok(headcni(&first));
    let target = t.bin().join("headcni");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, target, a, b) = (stop.clone(), target.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let seen = std::fs::read(&target).expect("the target is always there");
                assert!(seen == a || seen == b, "partial file: {} bytes", seen.len());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..20 {
        let mut args = t.install_args();
        let binary = if i % 2 == 0 { &b_path } else { &a_path };
        args.push(format!("--binary={}", binary.display()));
        ok(headcni(&args));
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw only whole files");
    assert!(reads > 0);
}

#[test]
fn the_installed_conflist_drives_an_add() {
    let mut n = Node::new();
    let t = Target::new(&n.lab.dir.path().join("root"));
    // The node's own spec; install keeps an existing one.
    let mut args = t.install_args();
    args[0] = format!("--spec={}", n.spec.display());
    ok(headcni(&args));
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.conflist()).unwrap()).unwrap();
    // What a runtime hands the first plugin of a list.
    let mut conf = conflist["plugins"][0].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let pod = n.lab.netns("pod");
    let path = Lab::ns_path(&pod);
    let call = CniCall::add(&pod, &path);
    let plugin = t.bin().join("headcni");
    let out = run_plugin(&n.node, plugin.to_str().unwrap(), &call, &conf.to_string());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json["cniVersion"], "1.0.0");
    let ip = common::result_ips(&out.json)[0].clone();
    assert!(n.lab.ping(&n.node, &ip), "the pod answers on {ip}");
}

#[test]
fn purge_removes_every_owned_object_and_nothing_else() {
    let mut n = Node::new();
    let ts = n.lab.netns("ts");
    // Host mode; the tailnet namespace it names is purged all the same.
    n.write_spec(&format!("\n[daemon]\nnetns = \"{ts}\"\n"));
    let (_pod, _ip) = n.add_pod("pod1");
    n.headcni_ok(&["apply"], 0);
    // Foreign objects beside ours.
    n.in_node(&[
        "ip",
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "203.0.113.1",
        "proto",
        "static",
    ]);
    n.in_node(&[
        "ip", "link", "add", "fx0", "type", "veth", "peer", "name", "fx1",
    ]);
    n.in_node(&["nft", "add", "table", "inet", "someone"]);
    assert!(!n.owned_links().is_empty() && !n.owned_routes().is_empty());

    let record = n.lab.dir.path().join("install.json");
    let out = purge(&n, &record);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.owned_links().is_empty(), "{:?}", n.owned_links());
    assert!(n.owned_routes().is_empty(), "{:?}", n.owned_routes());
    let tables = n.in_node(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("headcni") && tables.contains("someone"),
        "{tables}"
    );
    assert!(n.node_routes().contains("192.0.2.0/24 via 203.0.113.1"));
    assert!(n.lab.ip(&n.node, &["link", "show", "fx0"]).contains("fx0"));
    assert!(!Lab::ns_path(&ts).exists(), "the tailnet namespace is gone");
    // Again: nothing left to do.
    let out = purge(&n, &record);
    assert!(out.status.success());
}

fn purge(n: &Node, record: &Path) -> Output {
    n.headcni(&[
        "uninstall",
        "--purge",
        &format!("--record={}", record.display()),
    ])
}

/// `uninstall --purge` beside a running daemon (which would put everything
/// back) is refused, naming the daemon, and removes nothing.
#[test]
fn purge_is_refused_while_a_daemon_runs() {
    let mut n = Node::new();
    n.add_pod("pod1");
    let d = common::Daemon::start(&n);
    d.wait_for_log(std::time::Duration::from_secs(3), "applied");
    let record = n.lab.dir.path().join("install.json");
    let out = purge(&n, &record);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("daemon (pid ") && err.contains("stop it first"),
        "{err}"
    );
    assert!(!n.owned_links().is_empty() && !n.owned_routes().is_empty());
    drop(d);
    let out = purge(&n, &record);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.owned_links().is_empty(), "{:?}", n.owned_links());
}

/// `uninstall --stay` (the cleanup DaemonSet's pod): done, then running
/// until SIGTERM, which it waits for (as a container's PID 1 would
/// otherwise ignore it), and exits 0.
#[test]
fn uninstall_stay_waits_for_sigterm_once_done() {
    let mut n = Node::new();
    n.add_pod("pod1");
    n.headcni_ok(&["apply"], 0);
    let record = n.lab.dir.path().join("install.json");
    let out_path = n.lab.dir.path().join("cleanup.out");
    let out = std::fs::File::create(&out_path).unwrap();
    // long-running: SIGTERMed below (Procs kills it on a failure).
    let child = Command::new("ip")
        .args(["netns", "exec", &n.node, headcni_bin()])
        .args(["uninstall", "--purge", "--stay"])
        .arg(format!("--record={}", record.display()))
        .env("HEADCNI_SPEC", &n.spec)
        .stdout(out)
        .spawn()
        .unwrap();
    let mut procs = common::Procs(vec![child]);
    let said = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait_until(Duration::from_secs(10), "uninstalled, staying", || {
        said().contains("staying until stopped")
    });
    assert!(n.owned_links().is_empty(), "{:?}", n.owned_links());
    assert!(matches!(procs.0[0].try_wait(), Ok(None)), "it stays");
    // SAFETY: signalling our own child (ip netns exec execs headcni).
    unsafe { libc::kill(procs.0[0].id() as i32, libc::SIGTERM) };
    let mut code = None;
    wait_until(Duration::from_secs(5), "it stops on SIGTERM", || {
        code = procs.0[0].try_wait().ok().flatten().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(0)), "{}", said());
}

/// A stand-in API server: GET /api/v1/nodes/NAME with the right token.
const API_STANDIN: &str = r#"
import http.server, json, ssl, sys
nodes = {
    "ready": {"spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24", "fd00:10:244:7::/64"]}},
    "young": {"spec": {}},
}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name == "moved":
            self.send_response(302); self.send_header("Location", "https://127.0.0.1:6443/api/v1/nodes/ready"); self.end_headers(); return
        if name == "noisy":
            self.send_response(500); self.end_headers(); self.wfile.write(b"\x1b[2J\x1b[31mboom\n" * 100); return
        if self.headers.get("Authorization") != "Bearer lab-token" or name == "secret":
            self.send_response(403); self.end_headers(); self.wfile.write(b'{"kind":"Status","code":403}'); return
        if name not in nodes:
            self.send_response(404); self.end_headers(); self.wfile.write(b'{"kind":"Status","code":404}'); return
        body = json.dumps(dict(nodes[name], kind="Node", metadata={"name": name})).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(body)
    def record(self, name, code):
        if self.headers.get("Authorization") != "Bearer lab-token":
            self.send_response(403); self.end_headers(); return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[3] + "/" + name, "ab") as f:
            f.write(self.headers.get("Content-Type", "").encode() + b" " + body + b"\n")
        self.send_response(code); self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(b"{}")
    def do_PATCH(self):
        if self.path == "/api/v1/nodes/ready/status": self.record("conditions", 200)
        else: self.send_response(404); self.end_headers()
    def do_POST(self):
        if self.path == "/api/v1/namespaces/default/events": self.record("events", 201)
        else: self.send_response(404); self.end_headers()
    def log_message(self, *a): pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = http.server.HTTPServer(("127.0.0.1", 6443), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// A namespace whose loopback holds a stand-in API server (python, TLS
/// with a cluster CA of its own) and the service account's files for it.
struct ApiLab {
    ns: String,
    dir: PathBuf,
    sa: PathBuf,
}

impl ApiLab {
    /// The namespace, the CA, the certificate and the token; no server yet.
    fn new(lab: &mut Lab) -> ApiLab {
        let ns = lab.netns("api");
        lab.ip(&ns, &["link", "set", "lo", "up"]);
        let dir = lab.dir.path().to_path_buf();
        let sa = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa).unwrap();
        // A cluster CA, and the API server's certificate signed by it.
        let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let ca_crt = sa.join("ca.crt").to_str().unwrap().to_string();
        let openssl = |args: &str| {
            let args: Vec<&str> = args.split_whitespace().collect();
            let mut full = vec!["timeout", "60", "openssl"];
            full.extend(args);
            sh(&full)
        };
        openssl(&format!(
            "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=lab-ca -keyout {} -out {ca_crt}",
            p("ca.key")
        ));
        openssl(&format!(
            "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {} -out {}",
            p("key.pem"),
            p("server.csr")
        ));
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&format!(
            "x509 -req -in {} -CA {ca_crt} -CAkey {} -CAcreateserial -days 1 -extfile {} -out {}",
            p("server.csr"),
            p("ca.key"),
            p("san.ext"),
            p("server.crt")
        ));
        std::fs::write(sa.join("token"), "lab-token\n").unwrap();
        ApiLab { ns, dir, sa }
    }

    /// Starts the server and waits until it accepts connections.
    fn serve(&self) -> common::Procs {
        let server = Command::new("ip")
            .args(["netns", "exec", &self.ns, "python3", "-c", API_STANDIN])
            .arg(self.dir.join("server.crt"))
            .arg(self.dir.join("key.pem"))
            .arg(&self.dir)
            .spawn()
            .unwrap();
        let server = common::Procs(vec![server]);
        wait_until(Duration::from_secs(10), "the stand-in API server", || {
            Command::new("timeout")
                .args([
                    "5",
                    "ip",
                    "netns",
                    "exec",
                    &self.ns,
                    "python3",
                    "-c",
                    "import socket; socket.create_connection(('127.0.0.1', 6443), 1)",
                ])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        server
    }

    /// `--from-kubernetes` and its companions, for node `node`.
    fn render_args(&self, template: &Path, node: &str) -> Vec<String> {
        vec![
            "--from-kubernetes".to_string(),
            format!("--spec-template={}", template.display()),
            format!("--node-name={node}"),
            "--kube-api=https://127.0.0.1:6443".into(),
            format!("--kube-sa-dir={}", self.sa.display()),
        ]
    }

    /// `headcni daemon --from-kubernetes` on `spec`, rendered from
    /// `template` for node "ready"; its log in the lab's dir.
    fn daemon(&self, template: &Path, spec: &Path) -> (common::Procs, PathBuf) {
        let log = self.dir.join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, headcni_bin(), "daemon"])
            .args(self.render_args(template, "ready"))
            .env("HEADCNI_SPEC", spec)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        (common::Procs(vec![child]), log)
    }

    /// `headcni status --format json` of the daemon on `spec`.
    fn status(&self, spec: &Path) -> Option<serde_json::Value> {
        let out = Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.ns, headcni_bin()])
            .args(["status", "--format", "json"])
            .env("HEADCNI_SPEC", spec)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn template(&self) -> PathBuf {
        let template = self.dir.join("template.toml");
        std::fs::write(
            &template,
            format!(
                "version = 1\nmode = \"host\"\nstate_dir = \"{}\"\n\n[pod_network]\ncluster_cidr = \"10.244.0.0/16\"\n",
                self.dir.join("state").display()
            ),
        )
        .unwrap();
        template
    }
}

#[test]
fn the_pod_cidr_comes_from_the_node_object() {
    common::require_root();
    let mut lab = Lab::new();
    let api = ApiLab::new(&mut lab);
    let _server = api.serve();
    let (ns, dir) = (api.ns.clone(), api.dir.clone());
    let template = api.template();
    let install = |node: &str| {
        let t = Target::new(&dir.join(node.replace('/', "_")));
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            ns.clone(),
            headcni_bin().into(),
        ];
        args.extend(t.install_args());
        args.extend(api.render_args(&template, node));
        let out = Command::new("ip")
            .args(&args)
            .env_remove("HEADCNI_SPEC")
            .output()
            .unwrap();
        (t, out)
    };

    let (t, out) = install("ready");
    ok(out);
    let spec = std::fs::read_to_string(t.spec()).unwrap();
    assert!(spec.contains("cidr = \"10.244.7.0/24\""), "{spec}");
    assert!(spec.contains("cluster_cidr = \"10.244.0.0/16\""), "{spec}");

    for (node, says) in [
        ("young", "has no spec.podCIDR yet"),
        ("gone", "has no node gone (404)"),
        ("secret", "needs `get` on nodes"),
        // Never followed, never the other node, never raw escapes.
        ("moved", "a redirect, which headcni does not follow"),
        ("x/../ready", "has no node x/../ready (404)"),
        (
            "noisy",
            "answered 500 for node noisy: \\u{1b}[2J\\u{1b}[31mboom\\n",
        ),
    ] {
        let (t, out) = install(node);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{node}: {err}");
        assert!(!err.contains('\u{1b}'), "{node}: no raw escapes: {err:?}");
        assert!(
            !t.conflist().exists() && !t.spec().exists(),
            "{node}: nothing written"
        );
    }
}

/// An API server outage does not keep a restarted daemon down: with a spec
/// it rendered earlier on disk it starts on that one (status says so),
/// and renders anew once the API server answers. A spec headcni did not
/// render is not taken for one: then the daemon refuses to start.
#[test]
fn a_daemon_starts_on_the_spec_rendered_last_while_the_api_server_is_down() {
    common::require_root();
    let mut lab = Lab::new();
    let api = ApiLab::new(&mut lab);
    let template = api.template();
    let spec = api.dir.join("headcni.toml");
    let daemon = |spec_text: &str| {
        std::fs::write(&spec, spec_text).unwrap();
        api.daemon(&template, &spec)
    };
    let status = || api.status(&spec);
    let body = std::fs::read_to_string(&template).unwrap() + "cidr = \"10.244.9.0/24\"\n";

    // Hand-written: not a stand-in for a render.
    let (mut hand, _) = daemon(&body);
    wait_until(Duration::from_secs(10), "the daemon refuses", || {
        matches!(hand.0[0].try_wait(), Ok(Some(_)))
    });
    drop(hand);

    let (_daemon, log) = daemon(&format!(
        "# Rendered by headcni from an earlier run\n{body}"
    ));
    wait_until(
        Duration::from_secs(10),
        "the daemon on the old spec",
        || {
            status().is_some_and(|s| {
                s["render_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("running on the spec rendered last"))
                    && !s["last_pass"].is_null()
            })
        },
    );
    let _server = api.serve();
    wait_until(
        Duration::from_secs(30),
        "the render once the API server answers",
        || status().is_some_and(|s| s["render_error"].is_null()),
    );
    let rendered = std::fs::read_to_string(&spec).unwrap();
    assert!(rendered.contains("cidr = \"10.244.7.0/24\""), "{rendered}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("starting on the spec rendered last"), "{log}");
}

/// `daemon --from-kubernetes` puts the node's state where kubectl shows it
/// (stand-in API server: what matters is what headcni sends, and the real
/// server is issue 29's): a `HeadcniReady` condition, merged by type,
/// saying why the node is not ready (a route waiting for tailscale0), then
/// True once it converges; a Warning Event on the Node for a tailnet
/// problem as it appears (the host's tailscaled masquerading).
#[test]
fn the_daemon_reports_a_node_condition_and_events() {
    use std::os::unix::fs::PermissionsExt;
    common::require_root();
    let mut lab = Lab::new();
    let api = ApiLab::new(&mut lab);
    let _server = api.serve();
    let cli = api.dir.join("tailscale");
    let tailscale = |no_snat: bool| {
        std::fs::write(
            &cli,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n debug) echo '{{\"RouteAll\": true, \"AdvertiseRoutes\": [\"10.244.7.0/24\", \"fd00:10:244:7::/64\"], \"NoSNAT\": {no_snat}}}';;\n status) echo '{{\"BackendState\": \"Running\", \"Self\": {{\"HostName\": \"ready\", \"PrimaryRoutes\": [\"10.244.7.0/24\", \"fd00:10:244:7::/64\"]}}}}';;\nesac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    tailscale(true);
    let template = api.template();
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(
        &template,
        format!(
            "{text}\n[daemon]\nresync_seconds = 2\ntailscale = \"{}\"\n",
            cli.display()
        ),
    )
    .unwrap();
    let spec = api.dir.join("headcni.toml");
    let (_daemon, _log) = api.daemon(&template, &spec);
    let read = |name: &str| std::fs::read_to_string(api.dir.join(name)).unwrap_or_default();
    let last_condition = || -> serde_json::Value {
        read("conditions")
            .lines()
            .last()
            .and_then(|l| l.split_once(' '))
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .map(|v: serde_json::Value| v["status"]["conditions"][0].clone())
            .unwrap_or_default()
    };
    let diag = || {
        format!(
            "{}\n{}\n{}",
            read("conditions"),
            read("events"),
            read("daemon.log")
        )
    };
    wait_until(
        Duration::from_secs(15),
        "HeadcniReady False: waiting",
        || {
            let c = last_condition();
            c["type"] == "HeadcniReady" && c["status"] == "False" && c["reason"] == "Waiting"
        },
    );
    let c = last_condition();
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("tailscale0")),
        "{}",
        diag()
    );
    assert!(
        read("conditions").starts_with("application/strategic-merge-patch+json "),
        "{}",
        diag()
    );
    lab.ip(&api.ns, &["tuntap", "add", "tailscale0", "mode", "tun"]);
    lab.ip(&api.ns, &["link", "set", "tailscale0", "up"]);
    wait_until(Duration::from_secs(15), "HeadcniReady True", || {
        let c = last_condition();
        c["status"] == "True" && c["reason"] == "Converged"
    });
    assert!(
        read("events").is_empty(),
        "no problem, no event: {}",
        diag()
    );
    tailscale(false);
    wait_until(
        Duration::from_secs(15),
        "a Warning Event on the Node",
        || {
            read("events").lines().any(|l| {
                l.split_once(' ')
                    .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok())
                    .is_some_and(|e| {
                        e["type"] == "Warning"
                            && e["reason"] == "TailnetProblem"
                            && e["involvedObject"]["kind"] == "Node"
                            && e["involvedObject"]["name"] == "ready"
                            && e["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("--snat-subnet-routes=false"))
                    })
            })
        },
    );
    wait_until(
        Duration::from_secs(5),
        "HeadcniReady False: tailnet",
        || last_condition()["reason"] == "TailnetProblem",
    );
    // Two more resyncs that see the same problem record no second Event.
    let events = read("events").lines().count();
    let passes = || {
        api.status(&spec)
            .and_then(|s| s["passes_ok"].as_u64())
            .unwrap_or(0)
    };
    let before = passes();
    wait_until(Duration::from_secs(15), "two more resyncs", || {
        passes() >= before + 2
    });
    std::thread::sleep(LOOK_AGAIN);
    assert_eq!(
        read("events").lines().count(),
        events,
        "one Event a problem: {}",
        diag()
    );
}

/// The reporter looks at the status every 2 s (daemon/node_report.rs).
const LOOK_AGAIN: Duration = Duration::from_millis(2500);
