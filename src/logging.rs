//! Logging: tracing to stderr, as readable text (cron mail, a terminal) or JSON lines
//! (`--log-format json`, for journald and log shippers). Lines written while a progress bar is
//! drawn go above it. `CRM_JOBS_LOG` takes a tracing filter (e.g. `crm_jobs=debug`).

use std::io::{self, Write};
use std::sync::Mutex;

use anyhow::Result;
use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;

use crate::cli::{GlobalArgs, LogFormat};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Routes log lines above `bar` while it is drawn (`None` when it is gone).
pub fn set_progress_bar(bar: Option<ProgressBar>) {
    if let Ok(mut slot) = BAR.lock() {
        *slot = bar;
    }
}

struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) if !bar.is_hidden() => bar.suspend(|| io::stderr().write(buf)),
            _ => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Installs the global subscriber.
pub fn init(global: &GlobalArgs, color: bool) -> Result<()> {
    // The certificate verifier logs its refusals as errors of its own; the request's error
    // already says it, with what to do, so it is heard only with -vv.
    let default = if global.quiet {
        "warn,rustls_platform_verifier=off"
    } else {
        match global.verbose {
            0 => "warn,crm_jobs=info,rustls_platform_verifier=off",
            1 => "warn,crm_jobs=debug,rustls_platform_verifier=off",
            _ => "debug,crm_jobs=trace",
        }
    };
    let filter = match std::env::var("CRM_JOBS_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(&f)
            .map_err(|e| anyhow::anyhow!("`CRM_JOBS_LOG={f}` is not a valid log filter: {e}"))?,
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr);
    let result = match global.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(color)
            .without_time()
            .with_target(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
