//! Exit codes and the one place where an error chain is printed. The codes are part of the
//! interface: cron wrappers and systemd `SuccessExitStatus=` rely on them (see the README).

use std::process::ExitCode;

/// The documented exit codes of every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Everything done (or nothing was due).
    Success = 0,
    /// The run failed as a whole: it was stopped (captcha wall, changed API, store error), or
    /// every item it tried failed.
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// The run finished but some items failed; they are recorded and will be retried.
    Partial = 3,
    /// Another run of the same job holds its lock; nothing was done (EX_TEMPFAIL).
    Locked = 75,
    /// The configuration is invalid (EX_CONFIG).
    Config = 78,
    /// Stopped by SIGINT.
    Interrupted = 130,
    /// Stopped by SIGTERM.
    Terminated = 143,
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> Self {
        ExitCode::from(code as u8)
    }
}

/// An error that chooses its own exit code (config errors, a held lock).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: Code,
    pub message: String,
}

impl CodedError {
    pub fn config(message: impl Into<String>) -> anyhow::Error {
        CodedError {
            code: Code::Config,
            message: message.into(),
        }
        .into()
    }
}

/// The exit code for an error that reached the entry point.
pub fn code_for_error(err: &anyhow::Error) -> Code {
    err.chain()
        .find_map(|e| e.downcast_ref::<CodedError>().map(|c| c.code))
        .unwrap_or(Code::Failure)
}

/// Prints `error: ...` then one `Caused by:` line per cause, like cargo and uv. An "error" that
/// exits 0 (a paused job's start) is one plain line.
pub fn print_error(err: &anyhow::Error) {
    // Messages carry values from files, the store and the portal: escaped, so that none
    // forges a line.
    let shown = |e: &dyn std::fmt::Display| crate::output::printable(&e.to_string()).into_owned();
    if code_for_error(err) == Code::Success {
        eprintln!("{}", shown(err));
        return;
    }
    let mut chain = err.chain();
    if let Some(first) = chain.next() {
        eprintln!("error: {}", shown(first));
    }
    for cause in chain {
        eprintln!("  Caused by: {}", shown(cause));
    }
}
