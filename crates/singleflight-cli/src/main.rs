//! The `singleflight` binary: parses the command line (with the
//! environment and any config file) and hands it to
//! [`singleflight_cli::run`]; everything else lives in the library so tests
//! can drive it in-process.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match singleflight_cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => match e.downcast_ref::<clap::Error>() {
            Some(e) => return singleflight_cli::exit_on_clap_error(e),
            None => {
                let _ = writeln!(std::io::stderr(), "error: {e:#}");
                return ExitCode::from(singleflight_cli::exit_code(&e));
            }
        },
    };
    match singleflight_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if singleflight_cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain: what failed and how to fix it.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(singleflight_cli::exit_code(&e))
        }
    }
}
