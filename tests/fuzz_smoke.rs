//! A short libFuzzer run of every fuzz target (fuzz/), so that CI fuzzes the
//! parsers of untrusted input on every change. HEADCNI_FUZZ_SECONDS sets the
//! time per target (default 10); the long runs are `cargo +nightly fuzz run
//! TARGET` (docs/security.md, fuzz/README.md).

use std::path::Path;
use std::process::Command;

const TARGETS: &[&str] = &[
    "cni_config",
    "spec",
    "saved_plan",
    "snapshot",
    "netlink_answer",
];

/// cargo on `toolchain`, for the fuzz workspace. On stable, libFuzzer's
/// build needs nightly's flags: RUSTC_BOOTSTRAP=1 allows them.
fn fuzz_cargo(root: &Path, toolchain: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo"]).current_dir(root);
    // What the stable test run set for itself must not reach the fuzz build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    if toolchain == "stable" {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd
}

/// Nightly where rustup has it with cargo-fuzz; else stable, without a
/// sanitizer (its runtime comes with nightly): CI fuzzes either way.
fn toolchain(root: &Path) -> Option<(&'static str, &'static [&'static str])> {
    let works = |toolchain| {
        fuzz_cargo(root, toolchain)
            .args(["fuzz", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("nightly") {
        Some(("nightly", &[]))
    } else if works("stable") {
        eprintln!("no nightly toolchain: fuzzing on stable (RUSTC_BOOTSTRAP=1, --sanitizer none)");
        Some(("stable", &["--sanitizer", "none"]))
    } else {
        None
    }
}

#[test]
fn every_fuzz_target_runs_clean_for_a_while() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some((toolchain, fuzz_flags)) = toolchain(root) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fuzz: cargo-fuzz is installed by scripts/deps.sh"
        );
        eprintln!("fuzz smoke skipped: no cargo-fuzz (bash scripts/deps.sh installs it)");
        return;
    };
    let seconds = std::env::var("HEADCNI_FUZZ_SECONDS").unwrap_or_else(|_| "10".into());
    for target in TARGETS {
        // New inputs go to a scratch corpus under fuzz/target; the committed
        // one is only read.
        let scratch = root.join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&scratch).unwrap();
        let out = fuzz_cargo(root, toolchain)
            .args(["fuzz", "run", target])
            .args(fuzz_flags)
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
            ])
            .output()
            .expect("cargo fuzz");
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log.lines().rev().find_map(|l| {
            l.strip_prefix("Done ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        });
        assert!(
            out.status.success(),
            "fuzz target {target} failed (reproduce: cargo +nightly fuzz run {target} fuzz/artifacts/{target}/...):\n{}",
            log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        let runs = runs.expect("libFuzzer's closing line");
        eprintln!("fuzz {target}: {runs} runs in {seconds} s, no crash");
        assert!(runs > 0, "{target} ran no input");
    }
}
