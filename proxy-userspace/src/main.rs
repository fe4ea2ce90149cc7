use std::process::ExitCode;

/// Errors print as their cause chain (`error: a: b: c`), never as a backtrace, whatever
/// `RUST_BACKTRACE` says.
fn main() -> ExitCode {
    match proxy_userspace::cli::main() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
