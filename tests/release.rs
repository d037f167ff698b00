//! The release artefacts: a static binary (musl, or gnu with +crt-static
//! where rustup has no musl target) and the
//! image built from it with podman (FROM scratch: nothing pulled). Prints
//! their sizes; in CI a missing toolchain or podman is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn available(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn require(what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is missing (scripts/deps.sh installs it)"
        );
        eprintln!("skipped: {what} not installed (bash scripts/deps.sh)");
    }
    present
}

/// A static executable has no program interpreter (PT_INTERP).
fn is_static(binary: &Path) -> bool {
    let out = Command::new("readelf")
        .args(["-l"])
        .arg(binary)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("INTERP")
}

/// The static build: the musl target where rustup has it, else the gnu
/// target with a static C runtime (a machine whose rustup cannot add musl
/// keeps CI green and the binary static).
fn static_build() -> (&'static str, Vec<(&'static str, &'static str)>) {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.lines().any(|t| t == "x86_64-unknown-linux-musl") {
        ("x86_64-unknown-linux-musl", vec![])
    } else {
        eprintln!("no musl target: a static gnu build (+crt-static)");
        (
            "x86_64-unknown-linux-gnu",
            vec![("RUSTFLAGS", "-C target-feature=+crt-static")],
        )
    }
}

#[test]
fn static_musl_binary_and_its_image() {
    let (target, env) = static_build();
    // Its own target dir: the test run's is locked by the running cargo.
    let target_dir = root().join("target/release-static");
    let build = Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "--locked", "--target", target])
        .args(["--bin", "headcni"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .envs(env)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let binary = target_dir.join(target).join("release/headcni");
    assert!(is_static(&binary), "{} is not static", binary.display());
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(version.status.success());
    let size = std::fs::metadata(&binary).unwrap().len();
    eprintln!(
        "static {target} binary: {} bytes ({:.1} MiB), stripped",
        size,
        size as f64 / 1048576.0
    );

    if !require("podman", available("podman", &["--version"])) {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    let status = Command::new("bash")
        .arg(root().join("scripts/image-context.sh"))
        .arg(&binary)
        .arg(ctx.path())
        .status()
        .unwrap();
    assert!(status.success());
    let tag = format!("localhost/headcni-test:{}", std::process::id());
    let podman = |args: &[&str]| {
        Command::new("podman")
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap()
    };
    let built = podman(&[
        "build",
        "-q",
        "-f",
        "Containerfile",
        "-t",
        &tag,
        ctx.path().to_str().unwrap(),
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    struct Remove<'a>(&'a str);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = Command::new("podman")
                .args(["--storage-driver", "vfs", "rmi", "-f", self.0])
                .output();
        }
    }
    let _image = Remove(&tag);
    let inspect = podman(&["image", "inspect", "--format", "{{.Size}}", &tag]);
    let image_size: u64 = String::from_utf8_lossy(&inspect.stdout)
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "image {tag}: {} bytes ({:.1} MiB)",
        image_size,
        image_size as f64 / 1048576.0
    );
    // What is in it: the binary and the programs it runs, each able to start.
    let saved = podman(&[
        "image",
        "save",
        "--format",
        "docker-archive",
        "-o",
        ctx.path().join("image.tar").to_str().unwrap(),
        &tag,
    ]);
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let root_fs = ctx.path().join("rootfs");
    for (prog, arg) in [
        ("headcni", "--version"),
        ("usr/sbin/nft", "--version"),
        ("usr/sbin/conntrack", "--version"),
    ] {
        // Run inside the image's tree, with only its own libraries.
        let out = Command::new("chroot")
            .arg(&root_fs)
            .arg(format!("/{prog}"))
            .arg(arg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{prog}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
