//! The `cmrm` command line: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cmrm::ffi::quiet_broken_pipe();
    cmrm::ffi::install_abort_message();
    let cli = cli::Cli::parse_from(cli::llama_style_args(std::env::args()));
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::report(&e);
            ExitCode::FAILURE
        }
    }
}
