//! The invariants docs/architecture.md states, checked on the source text:
//! the pure parts import nothing that does IO, and only the kernel layer
//! (plus the exceptions listed here, each with its reason) opens sockets,
//! enters namespaces, runs nft or writes sysctls.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text without its `#[cfg(test)]` module (tests may do IO).
/// (The kernel check below still reads text; the purity check reads Rust.)
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(src())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The pure parts: they compute, and never read or change the machine.
const PURE: &[&str] = &["spec", "diff", "report", "drift", "model"];

/// What a pure part must not name, with why. A path is forbidden when it
/// starts with one of these (as resolved from the file's module: `super::`,
/// `self::` and `crate::` are followed).
const IO_PATHS: &[(&str, &str)] = &[
    ("std::fs", "files"),
    ("std::process", "processes"),
    ("std::env", "the environment"),
    ("std::os", "file descriptors, unix sockets, file modes"),
    ("std::net::TcpStream", "sockets"),
    ("std::net::TcpListener", "sockets"),
    ("std::net::UdpSocket", "sockets"),
    ("std::io::stdin", "the terminal"),
    ("std::io::stdout", "the terminal"),
    ("std::io::stderr", "the terminal"),
    (
        "std::time::Instant",
        "the clock: a pure part is deterministic",
    ),
    (
        "std::time::SystemTime",
        "the clock: a pure part is deterministic",
    ),
    ("std::thread::sleep", "waiting"),
    ("libc", "system calls"),
    ("nix", "system calls"),
    ("sled", "the store"),
    ("tokio", "the runtime"),
    ("notify", "file watches"),
    ("ureq", "HTTP"),
    ("rtnetlink", "netlink"),
    ("netlink_sys", "netlink"),
    ("netlink_proto", "netlink"),
    ("nftables::helper", "the nft process"),
    ("tracing_subscriber", "log output"),
    ("crate::observe", "the kernel"),
    ("crate::apply", "the kernel"),
    ("crate::kernel", "the machine: the kernel layer"),
    ("crate::store", "the store"),
    ("crate::snapshot", "files"),
    ("crate::engine", "the pass"),
    ("crate::daemon", "the daemon"),
    ("crate::cni", "the CNI edge"),
    ("crate::install", "the install edge"),
    ("crate::hosttailnet", "the host tailscaled"),
    ("crate::stdout", "the terminal"),
    ("crate::fuzzing", "the fuzz edge"),
];

/// Macros that print: output is the edge's job.
const IO_MACROS: &[&str] = &[
    "print", "println", "eprint", "eprintln", "dbg", "out", "outln",
];

/// A module as the compiler sees it: its path from the crate root and the
/// file holding it.
struct Module {
    path: Vec<String>,
    file: PathBuf,
}

fn cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file).unwrap();
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Every module compiled outside tests, from `root` down its `mod x;`
/// declarations (a `#[cfg(test)] mod x;` and its file are left out).
fn modules_from(root: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut todo = vec![(vec!["crate".to_string()], root.to_path_buf())];
    while let Some((path, file)) = todo.pop() {
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "mod.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        for item in parse(&file).items {
            if let syn::Item::Mod(m) = item {
                if m.content.is_some() || cfg_test(&m.attrs) {
                    continue;
                }
                let name = m.ident.to_string();
                let flat = dir.join(format!("{name}.rs"));
                let child = if flat.exists() {
                    flat
                } else {
                    dir.join(&name).join("mod.rs")
                };
                let mut child_path = path.clone();
                child_path.push(name);
                todo.push((child_path, child));
            }
        }
        out.push(Module { path, file });
    }
    out
}

/// The forbidden paths a file names outside its `#[cfg(test)]` items, as
/// "path (why)".
fn io_named(module: &[String], mut file: syn::File) -> Vec<String> {
    struct Names<'a> {
        module: Vec<String>,
        found: &'a mut Vec<String>,
    }
    impl Names<'_> {
        fn check(&mut self, segments: Vec<String>) {
            // `self::` and leading `super::`s are relative to this module.
            let supers = segments.iter().take_while(|s| *s == "super").count();
            let mut resolved: Vec<String> = match segments.first().map(String::as_str) {
                Some("self") => self.module.clone(),
                Some("super") => self.module[..self.module.len().saturating_sub(supers)].to_vec(),
                _ => Vec::new(),
            };
            let skip = if segments.first().is_some_and(|s| s == "self") {
                1
            } else {
                supers
            };
            resolved.extend(segments[skip..].iter().cloned());
            for (prefix, why) in IO_PATHS {
                let prefix: Vec<&str> = prefix.split("::").collect();
                if resolved.len() >= prefix.len()
                    && resolved.iter().zip(&prefix).all(|(a, b)| a == b)
                {
                    self.found.push(format!("{} ({why})", resolved.join("::")));
                }
            }
        }
        fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
            match tree {
                syn::UseTree::Path(p) => {
                    prefix.push(p.ident.to_string());
                    self.use_tree(prefix, &p.tree);
                    prefix.pop();
                }
                syn::UseTree::Name(n) => {
                    let mut full = prefix.clone();
                    if n.ident != "self" {
                        full.push(n.ident.to_string());
                    }
                    self.check(full);
                }
                syn::UseTree::Rename(r) => {
                    let mut full = prefix.clone();
                    full.push(r.ident.to_string());
                    self.check(full);
                }
                syn::UseTree::Glob(_) => self.check(prefix.clone()),
                syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
            }
        }
    }
    impl syn::visit_mut::VisitMut for Names<'_> {
        fn visit_item_mut(&mut self, item: &mut syn::Item) {
            let attrs = match item {
                syn::Item::Fn(i) => &i.attrs,
                syn::Item::Mod(i) => &i.attrs,
                syn::Item::Impl(i) => &i.attrs,
                syn::Item::Use(i) => &i.attrs,
                syn::Item::Const(i) => &i.attrs,
                syn::Item::Static(i) => &i.attrs,
                syn::Item::Struct(i) => &i.attrs,
                syn::Item::Enum(i) => &i.attrs,
                syn::Item::Trait(i) => &i.attrs,
                syn::Item::Macro(i) => &i.attrs,
                _ => return syn::visit_mut::visit_item_mut(self, item),
            };
            if cfg_test(attrs) {
                return;
            }
            if let syn::Item::Mod(m) = item {
                if m.content.is_some() {
                    self.module.push(m.ident.to_string());
                    syn::visit_mut::visit_item_mod_mut(self, m);
                    self.module.pop();
                    return;
                }
            }
            syn::visit_mut::visit_item_mut(self, item)
        }
        fn visit_item_use_mut(&mut self, item: &mut syn::ItemUse) {
            let mut prefix = Vec::new();
            self.use_tree(&mut prefix, &item.tree);
        }
        fn visit_path_mut(&mut self, path: &mut syn::Path) {
            self.check(path.segments.iter().map(|s| s.ident.to_string()).collect());
            syn::visit_mut::visit_path_mut(self, path)
        }
        fn visit_macro_mut(&mut self, mac: &mut syn::Macro) {
            if let Some(name) = mac.path.get_ident() {
                if IO_MACROS.iter().any(|m| name == m) {
                    self.found.push(format!("{name}! (output)"));
                }
            }
            syn::visit_mut::visit_macro_mut(self, mac)
        }
    }
    let mut found = Vec::new();
    syn::visit_mut::VisitMut::visit_file_mut(
        &mut Names {
            module: module.to_vec(),
            found: &mut found,
        },
        &mut file,
    );
    found
}

/// spec/, diff/, report/, drift.rs and model.rs name nothing that reads or
/// changes the machine: no IO crate, no std module that does IO, no clock,
/// no printing, no module of headcni's own that does any of it. Read as
/// Rust (syn), so `use std::{fs, ..}`, `super::super::files`, a path in an
/// expression and code after a file's test module are all seen.
#[test]
fn the_pure_parts_name_no_io() {
    let mut found = Vec::new();
    for module in modules_from(&src().join("lib.rs")) {
        if !PURE.contains(&module.path.get(1).map_or("", String::as_str)) {
            continue;
        }
        let name = relative(&module.file);
        for hit in io_named(&module.path, parse(&module.file)) {
            found.push(format!("{name}: {hit}"));
        }
    }
    assert!(
        found.is_empty(),
        "pure modules naming IO (move it to the edge that calls them):\n{}",
        found.join("\n")
    );
}

/// The check fails on a planted breach of each kind, and passes what is
/// allowed (the same names in a test module, pure std).
#[test]
fn the_purity_check_sees_each_kind_of_breach() {
    let planted = r#"
        use std::{collections::BTreeMap, fs};
        use super::super::kernel::files::read_existing;
        use crate::kernel::netlink as kernel;
        use std::os::unix::fs::PermissionsExt;
        pub fn f() {
            let _ = std::process::Command::new("nft");
            let _ = std::time::Instant::now();
            println!("hi");
        }
        #[cfg(test)]
        mod tests {
            use std::fs;
        }
        pub fn g() {
            let _ = nix::unistd::getpid();
        }
    "#;
    let module = ["crate", "spec", "raw"].map(String::from);
    let found = io_named(&module, syn::parse_file(planted).unwrap());
    let expect = [
        "std::fs (files)",
        "crate::kernel::files::read_existing (the machine: the kernel layer)",
        "crate::kernel::netlink (the machine: the kernel layer)",
        "std::os::unix::fs::PermissionsExt (file descriptors, unix sockets, file modes)",
        "std::process::Command::new (processes)",
        "std::time::Instant::now (the clock: a pure part is deterministic)",
        "println! (output)",
        "nix::unistd::getpid (system calls)",
    ];
    assert_eq!(found, expect.map(String::from).to_vec());
}

/// Kernel access lives in kernel/ (observe and apply go through it); an
/// exception would be listed with its reason, so a new one fails here.
#[test]
fn only_the_kernel_layer_touches_the_kernel() {
    const KERNEL_CALLS: &[&str] = &[
        "Socket::new(",
        "setns(",
        "unshare(",
        "Command::new(\"nft\")",
        "Command::new(\"conntrack\")",
        "\"/proc/sys\"",
    ];
    /// (file, call, why it is not in kernel/)
    const EXCEPTIONS: &[(&str, &str, &str)] = &[];
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in &files {
        let name = relative(file);
        if name.starts_with("kernel/") || name == "fuzzing.rs" {
            continue;
        }
        let code = code_of(file);
        for call in KERNEL_CALLS {
            let allowed = EXCEPTIONS.iter().any(|(f, c, _)| *f == name && c == call);
            if code.contains(call) && !allowed {
                found.push(format!("{name}: {call}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "kernel access outside kernel/ (move it there, or list it with its reason):\n{}",
        found.join("\n")
    );
}

/// The test harness runs no command without a deadline: a command run to
/// completion goes through `common::bounded` (`timeout`), and the only
/// other `Command::new` are long-running processes a guard ends, marked so.
#[test]
fn the_harness_bounds_every_command() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut found = Vec::new();
    for harness in ["common/mod.rs", "tailnet/mod.rs", "realnet/mod.rs"] {
        let text = std::fs::read_to_string(tests.join(harness)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains("Command::new(") {
                continue;
            }
            let the_wrapper = line.contains("Command::new(\"timeout\")")
                && lines[..i]
                    .iter()
                    .rev()
                    .take(3)
                    .any(|l| l.contains("fn bounded("));
            let marked = lines[i.saturating_sub(3)..i]
                .iter()
                .any(|l| l.contains("// long-running:"));
            if !the_wrapper && !marked {
                found.push(format!("tests/{harness}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "commands without a deadline (use common::bounded, or mark a long-running one with the guard that ends it):\n{}",
        found.join("\n")
    );
}

/// The layers docs/architecture.md's code map lists, lowest first: a module
/// names only modules of its own layer or below.
const LAYERS: &[&[&str]] = &[
    &["model", "spec", "diff", "drift", "report"],
    &["store", "snapshot"],
    &["kernel"],
    &["observe", "apply"],
    &["engine"],
    &["attach", "hosttailnet", "headscale"],
    &["cni", "daemon", "install", "stdout", "fuzzing"],
];

/// (from, to, why) a module may name above its layer.
const LAYER_EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "attach",
        "crate::cni::error",
        "verdicts are CNI errors, with the protocol's codes",
    ),
    (
        "attach",
        "crate::cni::handoff",
        "a batch is the hand-off's requests; an ADD's answer is its `Wired`",
    ),
    (
        "attach",
        "crate::cni::same_namespace",
        "CHECK compares namespaces as the plugin's env checks do",
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn each_layer_names_only_layers_below_it() {
    let mut found = Vec::new();
    for module in modules_from(&src().join("lib.rs")) {
        let Some(top) = module.path.get(1) else {
            continue;
        };
        let Some(own) = layer_of(top) else {
            found.push(format!(
                "{top}: in no layer (add it to LAYERS and the code map)"
            ));
            continue;
        };
        let code = code_of(&module.file);
        for (at, _) in code.match_indices("crate::") {
            let named: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let Some(theirs) = layer_of(&named) else {
                continue;
            };
            let allowed = LAYER_EXCEPTIONS
                .iter()
                .any(|(from, to, _)| from == top && code[at..].starts_with(to));
            if theirs > own && !allowed {
                found.push(format!(
                    "{}: {top} (layer {own}) names crate::{named} (layer {theirs})",
                    relative(&module.file)
                ));
            }
        }
    }
    found.sort();
    found.dedup();
    assert!(
        found.is_empty(),
        "a module names a layer above its own:\n{}",
        found.join("\n")
    );
}
