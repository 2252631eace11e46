//! `crm-jobs enqueue [FILE|-]`: JSON lines of ERP changes into the CRM outbox. A bad line is
//! reported with file, line and reason and enqueues nothing; the others go in one transaction.
//! A newer pending change of a record supersedes the older one.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use super::Ctx;
use crate::clock;
use crate::exit::Code;
use crate::files::BoundedLines;
use crate::store::NewItem;

/// Arguments of `enqueue`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON lines `{"entity", "record_id", "action", "payload"[, "priority"]}`; `-` or nothing
    /// reads stdin. Actions: `create`, `update`, `delete`, `upsert` (create or update, as the
    /// CRM id is known or not).
    pub file: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let (name, input): (String, Box<dyn BufRead>) = match args.file.as_deref() {
        None => ("stdin".to_string(), Box::new(std::io::stdin().lock())),
        Some(p) if p.as_os_str() == "-" => ("stdin".to_string(), Box::new(std::io::stdin().lock())),
        Some(p) => (
            p.display().to_string(),
            Box::new(std::io::BufReader::new(
                std::fs::File::open(p).with_context(|| format!("cannot read `{}`", p.display()))?,
            )),
        ),
    };
    let resources = &ctx.loaded.config.crm.resources;
    let mut items = Vec::new();
    let mut bad = 0usize;
    // Read as it comes, a line at a time, each at most 1 MB: an endless input (`/dev/zero`)
    // stops there, and nothing is enqueued.
    let mut lines = BoundedLines::new(input);
    while let Some((n, line)) = lines
        .next_line()
        .map_err(|e| anyhow::anyhow!(e.describe(&name, "a file of JSON lines", "enqueued")))?
    {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, resources) {
            Ok(item) => items.push(item),
            Err(reason) => {
                bad += 1;
                tracing::warn!("{name}:{n}: {reason}; line skipped");
            }
        }
    }
    let mut store = ctx.open_store()?;
    let now = clock::to_store(ctx.clock.now());
    let added = store.enqueue(&items)?;
    let (superseded, cancelled) = store.supersede(&now)?;
    if ctx.printer.json {
        ctx.printer.json_out(&serde_json::json!({
            "file": name, "enqueued": added, "superseded": superseded, "cancelled": cancelled, "skipped": bad,
        }));
    }
    ctx.printer.say(&format!(
        "enqueued {added} change(s) from {name}; {superseded} older pending change(s) superseded, {cancelled} cancelled out; {bad} line(s) skipped"
    ));
    Ok(if bad > 0 {
        Code::Partial
    } else {
        Code::Success
    })
}

/// Reads one JSON line of changes (public for the fuzz target).
pub fn parse_line(
    line: &str,
    resources: &std::collections::BTreeMap<String, String>,
) -> Result<NewItem, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let text = |k: &str| -> Result<String, String> {
        match obj.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(format!("`{k}` must be a non-empty text or number")),
            None => Err(format!("`{k}` is missing")),
        }
    };
    let named = text("entity")?;
    // The ERP's queue table names entities in the singular (`cliente`): a synonym.
    let Some(entity) = crate::crm::canonical_entity(&named, resources).map(str::to_string) else {
        let known: Vec<&str> = resources.keys().map(String::as_str).collect();
        return Err(format!(
            "`entity` = `{named}` is not one of {} (`[crm.resources]`)",
            known.join(", ")
        ));
    };
    let record_id = text("record_id")?;
    let action = text("action")?;
    if !["create", "update", "delete", "upsert"].contains(&action.as_str()) {
        return Err(format!(
            "`action` = `{action}` is not one of create, update, delete, upsert"
        ));
    }
    let payload = match obj.get("payload") {
        Some(p @ Value::Object(_)) => p.to_string(),
        None | Some(Value::Null) if action == "delete" => "{}".to_string(),
        Some(_) => return Err("`payload` must be a JSON object".into()),
        None => return Err(format!("`payload` is missing (needed to {action})")),
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
        Some(_) => return Err("`priority` must be an integer".into()),
    };
    Ok(NewItem {
        entity,
        record_id,
        action,
        payload,
        priority,
    })
}
