#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match imagecache::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line: the error and its causes.
            eprintln!("imagecache: {e}");
            ExitCode::FAILURE
        }
    }
}
