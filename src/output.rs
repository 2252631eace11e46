//! What a command shows: progress bars on a terminal only, results on stdout (tables, `--json`),
//! everything for people on stderr. Under cron nothing is drawn. Every result goes through
//! [`stdout`] (or [`outln!`](crate::outln)), which ends quietly when the reader goes away.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event (cron mail, a terminal).
    Text,
    /// One JSON object per line (journald, log shippers).
    Json,
}

/// How this process shows things: the global options that concern output (`--quiet`, `-v`,
/// `--json`, `--log-format`), turned once (in `lib.rs`) into this value, which logging and the
/// [`Printer`] read. The layers below the command line never see the command line itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputOptions {
    pub quiet: bool,
    pub verbose: u8,
    pub json: bool,
    pub log_format: LogFormat,
}

/// The progress bar drawn now, if any: log lines go above it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Routes log lines above `bar` while it is drawn (`None` when it is gone).
fn set_progress_bar(bar: Option<ProgressBar>) {
    if let Ok(mut slot) = BAR.lock() {
        *slot = bar;
    }
}

/// Writes `buf` to stderr above the progress bar drawn now, if any (the logger's writer).
pub fn write_stderr_above_bar(buf: &[u8]) -> std::io::Result<usize> {
    let bar = BAR.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(bar) if !bar.is_hidden() => bar.suspend(|| std::io::stderr().write(buf)),
        _ => std::io::stderr().write(buf),
    }
}

/// Whether stderr gets colors: a terminal, and `NO_COLOR` unset.
pub fn use_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Decides what is drawn and printed.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub quiet: bool,
    pub json: bool,
    /// stderr is a terminal and logs are text: draw progress bars.
    pub interactive: bool,
    pub color: bool,
    /// Logs are JSON lines: lines for people go through the logger too.
    pub json_logs: bool,
}

impl Printer {
    pub fn new(global: &OutputOptions) -> Printer {
        Printer {
            quiet: global.quiet,
            json: global.json,
            interactive: std::io::stderr().is_terminal()
                && global.log_format == LogFormat::Text
                && !global.quiet,
            color: use_color(),
            json_logs: global.log_format == LogFormat::Json,
        }
    }

    /// Whether one line per item is logged (not on a terminal, where the bar shows it).
    pub fn item_lines(&self) -> bool {
        !self.interactive && !self.quiet
    }

    /// A progress bar over `len` items, hidden unless interactive.
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        if !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let template = if self.color {
            "{spinner:.green} {prefix} [{bar:30.cyan/blue}] {pos}/{len} {percent}% ETA {eta} {wide_msg}"
        } else {
            "{spinner} {prefix} [{bar:30}] {pos}/{len} {percent}% ETA {eta} {wide_msg}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        set_progress_bar(Some(bar.clone()));
        bar
    }

    /// Removes a bar and stops routing log lines around it.
    pub fn finish_progress(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        set_progress_bar(None);
    }

    /// A line for people (stderr), unless quiet; a log event when logs are JSON.
    pub fn say(&self, line: &str) {
        if self.json_logs {
            tracing::info!("{line}");
        } else if !self.quiet {
            eprintln!("{}", printable(line));
        }
    }

    /// A JSON result on stdout.
    pub fn json_out(&self, value: &serde_json::Value) {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    }
}

/// Set once stdout's reader went away: the rest of the output is dropped.
static READER_GONE: AtomicBool = AtomicBool::new(false);

/// The first failure to write stdout other than a reader gone away (a full disk, an I/O
/// error), for the entry point to report once.
static WRITE_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Writes `bytes` to stdout: the one way every command writes its results. A reader that goes
/// away (`crm-jobs export invoices --format json | head`) is not an error: the rest of the output
/// is dropped and the command ends as it would have, quietly, as ripgrep and other Unix tools
/// do. Any other failure is kept for [`stdout_error`].
pub fn stdout(bytes: &[u8]) {
    StdoutSink.write_all(bytes).ok();
}

/// Stdout as a [`Write`] for output streamed in pieces (an export of a million rows, through a
/// `BufWriter`), with the rules of [`stdout`]: once the reader went away or a write failed,
/// every write fails at once, so that the producer stops; the entry point reports a failure
/// other than a reader gone away, once.
pub struct StdoutSink;

impl Write for StdoutSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if stdout_failed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdout is closed",
            ));
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(bytes).and_then(|()| out.flush()) {
            Ok(()) => Ok(bytes.len()),
            Err(e) => {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    READER_GONE.store(true, Ordering::Relaxed);
                } else if let Ok(mut first) = WRITE_ERROR.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether writing stdout has ended: its reader went away, or a write failed (then
/// [`stdout_error`] says why).
pub fn stdout_failed() -> bool {
    READER_GONE.load(Ordering::Relaxed) || WRITE_ERROR.lock().is_ok_and(|e| e.is_some())
}

/// The first failure to write stdout, if any; a reader that went away is not one.
pub fn stdout_error() -> Option<String> {
    WRITE_ERROR.lock().ok().and_then(|e| e.clone())
}

/// `println!` for results: one line to stdout through [`output::stdout`](crate::output::stdout),
/// so that a reader going away is not an error.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout(b"\n")
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// `1.2s`, `350ms`, `2m05s`.
pub fn human_duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Whether `c` must not reach a terminal or a log as is: control characters (a line break
/// would forge a log line, an escape sequence would drive the terminal) and the bidirectional
/// formatting characters that reorder what a reader sees (`U+202E`).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with control and bidirectional-formatting characters shown as escapes (`\n`, `\t`,
/// `\u{202e}`, `\u{0}`), so that a value printed in a log line or a message can neither forge
/// a line nor reorder the text around it.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(printable("MARIA"), "MARIA");
        assert_eq!(
            printable("MARIA\n WARN forged\u{0}\u{202e}x\t\u{1b}[31m"),
            "MARIA\\n WARN forged\\u{0}\\u{202e}x\\t\\u{1b}[31m"
        );
        assert_eq!(printable("JOSÉ DA SILVA – Ç"), "JOSÉ DA SILVA – Ç");
    }
}
