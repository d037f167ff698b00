use std::process::ExitCode;

fn main() -> ExitCode {
    // Runtimes run CNI plugins with no arguments and CNI_COMMAND set.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return headcni::cni::run();
    }
    headcni_cli::run()
}

#[path = "cli/mod.rs"]
mod headcni_cli;
