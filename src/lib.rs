//! crm-jobs: back-office jobs run by cron or systemd timers as short-lived processes over one
//! SQLite store. `main` parses the command line, sets up logging and the clock, runs one command
//! and turns its outcome into the process exit code; it is the only place that prints an error
//! chain.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod boleto_files;
pub mod canopus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crm;
pub mod diagnostics;
pub mod domain;
pub mod email;
pub mod exit;
pub mod fetching;
pub mod files;
pub mod http;
pub mod job;
pub mod jobs;
pub mod lifecycle;
pub mod logging;
pub mod mailer;
pub mod metrics;
pub mod nio;
pub mod output;
pub mod pings;
pub mod retry;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod secret_box;
pub mod spreadsheet;
pub mod store;
pub mod stripe;
pub mod templates;
pub mod timers;
pub mod tls;

use std::process::ExitCode;

use clap::Parser;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let color = output::use_color();
    if let Err(err) = logging::init(&cli.global.output(), color) {
        eprintln!("error: {}", output::printable(&format!("{err:#}")));
        return exit::Code::Config.into();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return exit::Code::Failure.into();
        }
    };
    let outcome = runtime.block_on(cli::dispatch(cli));
    // Workers left behind by an interrupted run must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    let code = match outcome {
        Ok(code) => code,
        Err(err) => {
            exit::print_error(&err);
            exit::code_for_error(&err)
        }
    };
    // The results were not all written (a reader going away is not a failure: see `output`).
    if let Some(e) = output::stdout_error() {
        eprintln!("error: cannot write the results to stdout: {e}");
        if code == exit::Code::Success {
            return exit::Code::Failure.into();
        }
    }
    code.into()
}
