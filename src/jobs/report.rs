//! `crm-jobs report`: one self-contained HTML page (inline CSS and SVG, no script, no external
//! asset: it opens from disk) with the charts an operator looks at: success per day and job,
//! run durations, invoice outcomes per safra and safra against safra, the slowest invoices, persistent errors, queue
//! throughput and depth, boleto outcomes per consultant.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use anyhow::Result;
use chrono::NaiveDate;

use super::Ctx;
use crate::clock;
use crate::exit::{Code, CodedError};
use crate::store::Triples;

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the page here (atomically); default: stdout.
    #[arg(long, value_name = "FILE.html")]
    pub out: Option<PathBuf>,
    /// First day of the run history shown (default: 30 days ago).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub since: Option<String>,
}

const PALETTE: &[&str] = &[
    "#2e7d32", "#c62828", "#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#9e9d24", "#5d4037",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal stacked bar chart as inline SVG: one bar per category, one color per series.
fn chart(title: &str, rows: &[(String, Vec<(String, f64)>)], unit: &str) -> String {
    let mut series: Vec<String> = rows
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(s, _)| s.clone()))
        .collect();
    series.sort();
    series.dedup();
    let color = |s: &str| PALETTE[series.iter().position(|x| x == s).unwrap_or(0) % PALETTE.len()];
    let max = rows
        .iter()
        .map(|(_, v)| v.iter().map(|(_, n)| n).sum::<f64>())
        .fold(0.0, f64::max)
        .max(1.0);
    let (label_w, bar_w, row_h, top) = (200.0, 480.0, 20.0, 34.0);
    let height = top + rows.len().max(1) as f64 * row_h + 10.0;
    let mut svg = String::new();
    write!(
        svg,
        r#"<figure><figcaption>{}</figcaption><svg class="chart" xmlns="http://www.w3.org/2000/svg" width="760" height="{height}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    )
    .ok();
    let mut x = label_w;
    for s in &series {
        write!(svg, r#"<rect x="{x}" y="6" width="10" height="10" fill="{}"/><text x="{}" y="15" font-size="11">{}</text>"#, color(s), x + 14.0, esc(s)).ok();
        x += 24.0 + 7.0 * s.chars().count() as f64;
    }
    if rows.is_empty() {
        write!(
            svg,
            r#"<text x="{label_w}" y="{}" font-size="12" fill="gray">no data yet</text>"#,
            top + 14.0
        )
        .ok();
    }
    for (i, (cat, values)) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"#,
            label_w - 6.0,
            y + 13.0,
            esc(cat)
        )
        .ok();
        let mut x = label_w;
        let mut total = 0.0;
        for (s, n) in values {
            let w = n / max * bar_w;
            write!(svg, r#"<rect x="{x:.1}" y="{y}" width="{w:.1}" height="{}" fill="{}"><title>{}: {} {}</title></rect>"#, row_h - 4.0, color(s), esc(s), n, esc(unit)).ok();
            x += w;
            total += n;
        }
        write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="10" fill="dimgray">{}</text>"#,
            x + 4.0,
            y + 13.0,
            total
        )
        .ok();
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// Groups (category, series, n) triples into chart rows, categories in first-seen order.
fn rows(triples: &Triples) -> Vec<(String, Vec<(String, f64)>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for (cat, series, n) in triples {
        if !map.contains_key(cat) {
            order.push(cat.clone());
        }
        map.entry(cat.clone())
            .or_default()
            .push((series.clone(), *n as f64));
    }
    order
        .into_iter()
        .map(|c| {
            let v = map.remove(&c).unwrap_or_default();
            (c, v)
        })
        .collect()
}

pub fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let since = match &args.since {
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| CodedError {
            code: Code::Usage,
            message: format!("`--since {s}` is not a date (YYYY-MM-DD)"),
        })?,
        None => ctx.clock.today() - chrono::Days::new(30),
    };
    // Midnight in São Paulo, as a stored (UTC) instant.
    let since_s = since
        .and_hms_opt(0, 0, 0)
        .and_then(|t| {
            use chrono::TimeZone as _;
            chrono_tz::America::Sao_Paulo
                .from_local_datetime(&t)
                .earliest()
        })
        .map(|t| clock::to_store(t.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|| format!("{since}T00:00:00.000Z"));
    let store = ctx.open_store_for_reading()?;
    let (all, ok) = store.runs_per_day(&since_s)?;
    let ok_map: BTreeMap<(String, String), i64> =
        ok.into_iter().map(|(j, d, n)| ((j, d), n)).collect();
    let success: Vec<(String, Vec<(String, f64)>)> = all
        .iter()
        .map(|(job, day, n)| {
            let good = *ok_map.get(&(job.clone(), day.clone())).unwrap_or(&0);
            (
                format!("{day} {job}"),
                vec![
                    ("success".to_string(), good as f64),
                    ("not success".to_string(), (n - good) as f64),
                ],
            )
        })
        .collect();
    let durations: Vec<(String, Vec<(String, f64)>)> = {
        let d = store.run_durations(&since_s)?;
        d.iter()
            .rev()
            .take(30)
            .rev()
            .map(|(job, id, ms)| {
                (
                    format!("{id} {job}"),
                    vec![(job.clone(), *ms as f64 / 1000.0)],
                )
            })
            .collect()
    };
    let mut html = String::new();
    write!(
        html,
        r#"<!DOCTYPE html>
<html lang="pt-BR"><head><meta charset="utf-8"><title>crm-jobs report</title>
<style>
body {{ font-family: Arial, Helvetica, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }}
figure {{ margin: 8px 0; }} figcaption {{ font-weight: bold; font-size: 13px; margin-bottom: 4px; }}
table {{ border-collapse: collapse; font-size: 12px; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.muted {{ color: #777; font-size: 12px; }}
</style></head><body>
<h1>crm-jobs report</h1>
<p class="muted">Generated {} from <code>{}</code>; run history since {since}.</p>
"#,
        esc(&clock::to_store(ctx.clock.now())),
        esc(&store.path().display().to_string())
    )
    .ok();
    html.push_str("<h2>Runs</h2>\n");
    html.push_str(&chart("Success per day and job", &success, "runs"));
    html.push_str(&chart("Run durations (last 30 runs)", &durations, "s"));
    html.push_str("<h2>Invoices</h2>\n");
    html.push_str(&chart(
        "Invoice outcomes per safra",
        &rows(&store.outcomes_per_safra()?),
        "invoices",
    ));
    html.push_str(&chart(
        "Safra against safra: % paid of each invoice number (of those seen at Nio)",
        &rows(&store.paid_share_per_safra()?),
        "% paid",
    ));
    html.push_str("<table><caption>The 10 slowest invoice lookups</caption><tr><th>contract</th><th>invoice</th><th>ms</th></tr>\n");
    for (c, n, ms) in store.slowest_invoices(10)? {
        writeln!(
            html,
            "<tr><td>{}</td><td>{n}</td><td>{ms}</td></tr>",
            esc(&c)
        )
        .ok();
    }
    html.push_str("</table>\n<table><caption>Invoices with persistent errors</caption><tr><th>contract</th><th>invoice</th><th>status</th><th>failed attempts</th><th>last error</th></tr>\n");
    for (c, n, st, fa, err) in store.persistent_errors()? {
        writeln!(
            html,
            "<tr><td>{}</td><td>{n}</td><td>{}</td><td>{fa}</td><td>{}</td></tr>",
            esc(&c),
            esc(&st),
            esc(&err)
        )
        .ok();
    }
    html.push_str("</table>\n<h2>CRM queue</h2>\n");
    html.push_str(&chart(
        "Requests per day",
        &rows(&store.queue_throughput(&since_s)?),
        "requests",
    ));
    let depth: Vec<(String, Vec<(String, f64)>)> = store
        .queue_counts()?
        .into_iter()
        .map(|(s, n)| (s.clone(), vec![(s, n as f64)]))
        .collect();
    html.push_str(&chart("Queue depth by status (now)", &depth, "items"));
    html.push_str("<h2>Boletos</h2>\n");
    html.push_str(&chart(
        "Boleto outcomes per consultant",
        &rows(&store.boletos_per_consultant()?),
        "clients",
    ));
    html.push_str("</body></html>\n");
    match &args.out {
        Some(path) => {
            crate::files::write_output(path, html.as_bytes())?;
            ctx.printer
                .say(&format!("report written to `{}`", path.display()));
        }
        None => crate::output::stdout(html.as_bytes()),
    }
    Ok(Code::Success)
}
