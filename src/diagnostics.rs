//! Pages saved to diagnose a portal step that did not find what it expects: what today's
//! browser scripts give with a screenshot on failure. Each file is the page as the portal
//! answered it, preceded by an HTML comment with the step, the request that produced it
//! (secrets redacted) and the error. Files live in `diagnostics/` beside the store, private to
//! the owner (they may hold a client's name and CPF); `cleanup` removes them after
//! `[cleanup] diagnostics_days`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::canopus::webforms::Exchange;
use crate::files;

/// The folder of saved pages for the store at `store`.
pub fn folder(store: &Path) -> PathBuf {
    store
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join("diagnostics")
}

/// Text safe inside an HTML comment: no `--`, no control character (a line break would fake a
/// header line).
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace("--", "- -")
}

/// Saves the page of `exchange` with its header; returns the file's path.
pub fn save(
    dir: &Path,
    at: DateTime<Utc>,
    service: &str,
    step: &str,
    exchange: &Exchange,
    error: &str,
) -> Result<PathBuf> {
    let fields = exchange
        .fields
        .iter()
        .map(|(k, v)| format!("  {} = {}", comment_safe(k), comment_safe(v)))
        .collect::<Vec<_>>()
        .join("\n");
    let header = format!(
        "<!-- crm-jobs: a page saved to diagnose a failed step\nservice: {service}\nstep: {}\nat: {}\nrequest: {} {}\n{}answer: {} from {}\nerror: {}\n-->\n",
        comment_safe(step),
        at.format("%Y-%m-%dT%H:%M:%SZ"),
        exchange.method,
        comment_safe(&exchange.url),
        if fields.is_empty() {
            String::new()
        } else {
            format!("posted fields:\n{fields}\n")
        },
        exchange.status,
        comment_safe(&exchange.answered_url),
        comment_safe(error),
    );
    let slug: String = step
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = format!(
        "{service}-{}-{slug}-{:08x}.html",
        at.format("%Y%m%dT%H%M%SZ"),
        fastrand::u32(..)
    );
    files::write_atomic(dir, &name, format!("{header}{}", exchange.body).as_bytes())
}

/// Removes the saved pages written more than `days` before `now`; returns how many. A missing
/// folder holds none.
pub fn remove_older_than(
    dir: &Path,
    now: DateTime<Utc>,
    days: u32,
    dry_run: bool,
) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let limit = SystemTime::from(now)
        .checked_sub(Duration::from_secs(u64::from(days) * 86_400))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| t < limit);
        if old && path.extension().is_some_and(|e| e == "html") {
            if !dry_run {
                std::fs::remove_file(&path)
                    .map_err(|e| anyhow::anyhow!("cannot remove `{}`: {e}", path.display()))?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}
