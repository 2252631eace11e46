//! Logging: tracing to stderr, as readable text (cron mail, a terminal) or JSON lines
//! (`--log-format json`, for journald and log shippers). Lines written while a progress bar is
//! drawn go above it. `CRM_JOBS_LOG` takes a tracing filter (e.g. `crm_jobs=debug`).

use std::io::{self, Write};

use anyhow::Result;
use tracing_subscriber::EnvFilter;

use crate::output::{LogFormat, OutputOptions};

/// stderr, above the progress bar when one is drawn.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::output::write_stderr_above_bar(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Fields as the default text format writes them (the message bare, others `name=value`),
/// with control and bidirectional characters escaped: a name like `MARIA\n WARN forged` prints
/// on its own line, visibly, and forges nothing.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = crate::output::printable(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// Installs the global subscriber.
pub fn init(global: &OutputOptions, color: bool) -> Result<()> {
    // The certificate verifier logs its refusals as errors of its own; the request's error
    // already says it, with what to do, so it is heard only with -vv.
    let default = if global.quiet {
        "warn,rustls_platform_verifier=off"
    } else {
        match global.verbose {
            0 => "warn,crm_jobs=info,rustls_platform_verifier=off",
            1 => "warn,crm_jobs=debug,rustls_platform_verifier=off",
            // Other crates stay at warn: the HTML parser alone would log every page (CPFs and
            // names included) at debug. `CRM_JOBS_LOG=html5ever=debug` asks for them by name.
            _ => "warn,crm_jobs=trace",
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
            .fmt_fields(escaped_fields())
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A log line's values are escaped: a name with a line break prints on its own line.
    #[test]
    fn values_in_text_log_lines_are_escaped() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(super::escaped_fields())
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let name = "MARIA\n WARN forged\u{202e}";
            tracing::warn!(client = name, "{name}: cpf_not_found");
        });
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            " WARN MARIA\\n WARN forged\\u{202e}: cpf_not_found client=\"MARIA\\n WARN forged\\u{202e}\"\n"
        );
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
