//! Printing to stdout that survives a closed stdout (`headcni pod list |
//! head -1`, a runtime that stopped reading): the work is done either way,
//! so a broken pipe ends the output, not the process with a panic.

use std::fmt;
use std::io::Write;

/// Writes to stdout; a closed stdout is ignored, any other failure is
/// reported once on stderr.
pub fn print(args: fmt::Arguments) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() != std::io::ErrorKind::BrokenPipe && !REPORTED.swap(true, Ordering::Relaxed) {
            eprintln!("headcni: cannot write to stdout: {e}");
        }
    }
}

/// `print!` that does not panic on a closed stdout.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::stdout::print(format_args!($($arg)*)) };
}

/// `println!` that does not panic on a closed stdout.
#[macro_export]
macro_rules! outln {
    () => { $crate::stdout::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout::print(format_args!("{}\n", format_args!($($arg)*))) };
}
