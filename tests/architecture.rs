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

/// spec/, diff/, drift.rs, report/ and model.rs are pure: they import no
/// module that reads or changes the machine.
#[test]
fn the_pure_parts_import_no_io() {
    const IO_MODULES: &[&str] = &[
        "crate::observe",
        "crate::apply",
        "crate::netlink",
        "crate::nft",
        "crate::daemon",
        "crate::engine",
        "crate::files",
        "crate::cni",
        "crate::install",
        "crate::hosttailnet",
    ];
    let mut files = Vec::new();
    for dir in ["spec", "diff", "report"] {
        rust_files(&src().join(dir), &mut files);
    }
    files.push(src().join("drift.rs"));
    files.push(src().join("model.rs"));
    let mut found = Vec::new();
    for file in &files {
        let name = relative(file);
        // The pod store is spec's one IO part (sled), by design; golden and
        // property tests read files.
        if matches!(
            name.as_str(),
            "spec/store.rs" | "diff/golden.rs" | "diff/tests.rs"
        ) {
            continue;
        }
        let code = code_of(file);
        for module in IO_MODULES {
            if code.contains(module) {
                found.push(format!("{name} uses {module}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "pure modules doing IO:\n{}",
        found.join("\n")
    );
}

/// Kernel access lives in netlink/ (and observe/apply through it); the
/// exceptions are listed with their reason, so a new one fails here.
#[test]
fn only_the_kernel_layer_touches_the_kernel() {
    const KERNEL_CALLS: &[&str] = &[
        "Socket::new(",
        "setns(",
        "unshare(",
        "Command::new(\"nft\")",
        "\"/proc/sys\"",
    ];
    /// (file, call, why it is not in netlink/)
    const EXCEPTIONS: &[(&str, &str, &str)] = &[
        (
            "nft.rs",
            "Command::new(\"nft\")",
            "the nft process: nft.rs is the firewall's kernel layer",
        ),
        (
            "apply/mod.rs",
            "\"/proc/sys\"",
            "apply writes the sysctls a plan names",
        ),
    ];
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in &files {
        let name = relative(file);
        if name.starts_with("netlink/") || name == "fuzzing.rs" {
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
        "kernel access outside netlink/ (move it there, or list it with its reason):\n{}",
        found.join("\n")
    );
}
