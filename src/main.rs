use std::process::ExitCode;

fn main() -> ExitCode {
    headcni_cli::run()
}

#[path = "cli/mod.rs"]
mod headcni_cli;
