//! `crm-jobs report`: one self-contained HTML page (inline CSS and SVG, no script, no external
//! asset: it opens from disk) with the charts an operator looks at: success per day and job,
//! run durations, invoice outcomes per safra and safra against safra, the slowest invoices, persistent errors, queue
//! throughput and depth, boleto outcomes per consultant.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use chrono::NaiveDate;
use serde::Serialize;

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

/// The page's values, laid out by `templates/report.html` (auto-escaped: a contract number or an
/// error from a service is shown as text, never read as markup).
#[derive(Serialize)]
struct Page {
    generated: String,
    store: String,
    since: String,
    success: Chart,
    durations: Chart,
    outcomes: Chart,
    paid_share: Chart,
    slowest: Vec<SlowInvoice>,
    errors: Vec<ErrorRow>,
    queue_throughput: Chart,
    queue_depth: Chart,
    boletos: Chart,
}

#[derive(Serialize)]
struct SlowInvoice {
    contract: String,
    invoice: i64,
    ms: i64,
}

#[derive(Serialize)]
struct ErrorRow {
    contract: String,
    invoice: i64,
    status: String,
    failed_attempts: i64,
    error: String,
}

/// A horizontal stacked bar chart drawn as inline SVG: one bar per category, one color per
/// series. Coordinates are in SVG user units, rounded to a tenth.
#[derive(Serialize)]
struct Chart {
    title: String,
    unit: String,
    height: f64,
    /// Right edge of the category labels, where the bars start.
    label_x: f64,
    /// Baseline of "no data yet" when there are no rows.
    empty_y: f64,
    bar_h: f64,
    legend: Vec<Legend>,
    rows: Vec<Row>,
}

#[derive(Serialize)]
struct Legend {
    name: String,
    color: &'static str,
    x: f64,
    text_x: f64,
}

#[derive(Serialize)]
struct Row {
    label: String,
    label_x: f64,
    y: f64,
    text_y: f64,
    bars: Vec<Bar>,
    /// The sum of the row, shown after its bar.
    total: String,
    total_x: f64,
}

#[derive(Serialize)]
struct Bar {
    series: String,
    /// The value, as shown in the bar's tooltip.
    n: String,
    color: &'static str,
    x: f64,
    w: f64,
}

fn tenth(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The geometry of one chart: `rows` are (category, [(series, value)]).
fn chart(title: &str, rows: &[(String, Vec<(String, f64)>)], unit: &str) -> Chart {
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
    let mut legend = Vec::new();
    let mut x = label_w;
    for s in &series {
        legend.push(Legend {
            name: s.clone(),
            color: color(s),
            x,
            text_x: x + 14.0,
        });
        x += 24.0 + 7.0 * s.chars().count() as f64;
    }
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, (cat, values))| {
            let y = top + i as f64 * row_h;
            let mut x = label_w;
            let mut total = 0.0;
            let bars = values
                .iter()
                .map(|(s, n)| {
                    let w = n / max * bar_w;
                    let bar = Bar {
                        series: s.clone(),
                        n: n.to_string(),
                        color: color(s),
                        x: tenth(x),
                        w: tenth(w),
                    };
                    x += w;
                    total += n;
                    bar
                })
                .collect();
            Row {
                label: cat.clone(),
                label_x: label_w - 6.0,
                y,
                text_y: y + 13.0,
                bars,
                total: total.to_string(),
                total_x: tenth(x + 4.0),
            }
        })
        .collect::<Vec<_>>();
    Chart {
        title: title.to_string(),
        unit: unit.to_string(),
        height: top + rows.len().max(1) as f64 * row_h + 10.0,
        label_x: label_w,
        empty_y: top + 14.0,
        bar_h: row_h - 4.0,
        legend,
        rows,
    }
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
    let depth: Vec<(String, Vec<(String, f64)>)> = store
        .queue_counts()?
        .into_iter()
        .map(|(s, n)| (s.clone(), vec![(s, n as f64)]))
        .collect();
    let page = Page {
        generated: clock::to_store(ctx.clock.now()),
        store: store.path().display().to_string(),
        since: since.to_string(),
        success: chart("Success per day and job", &success, "runs"),
        durations: chart("Run durations (last 30 runs)", &durations, "s"),
        outcomes: chart(
            "Invoice outcomes per safra",
            &rows(&store.outcomes_per_safra()?),
            "invoices",
        ),
        paid_share: chart(
            "Safra against safra: % paid of each invoice number (of those seen at Nio)",
            &rows(&store.paid_share_per_safra()?),
            "% paid",
        ),
        slowest: store
            .slowest_invoices(10)?
            .into_iter()
            .map(|(contract, invoice, ms)| SlowInvoice {
                contract,
                invoice,
                ms,
            })
            .collect(),
        errors: store
            .persistent_errors()?
            .into_iter()
            .map(
                |(contract, invoice, status, failed_attempts, error)| ErrorRow {
                    contract,
                    invoice,
                    status,
                    failed_attempts,
                    error,
                },
            )
            .collect(),
        queue_throughput: chart(
            "Requests per day",
            &rows(&store.queue_throughput(&since_s)?),
            "requests",
        ),
        queue_depth: chart("Queue depth by status (now)", &depth, "items"),
        boletos: chart(
            "Boleto outcomes per consultant",
            &rows(&store.boletos_per_consultant()?),
            "clients",
        ),
    };
    let html = crate::templates::render("report.html", &page)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page(contract: &str, error: &str, category: &str) -> Page {
        let c = |title: &str| chart(title, &[], "items");
        Page {
            generated: "2025-11-10T12:00:00.000Z".into(),
            store: "/var/lib/crm-jobs/crm.db".into(),
            since: "2025-11-01".into(),
            success: chart(
                "Success per day and job",
                &[(category.to_string(), vec![(category.to_string(), 3.0)])],
                "runs",
            ),
            durations: c("Run durations (last 30 runs)"),
            outcomes: c("Invoice outcomes per safra"),
            paid_share: c("Safra against safra"),
            slowest: vec![SlowInvoice {
                contract: contract.into(),
                invoice: 1,
                ms: 1200,
            }],
            errors: vec![ErrorRow {
                contract: contract.into(),
                invoice: 2,
                status: "gave_up".into(),
                failed_attempts: 3,
                error: error.into(),
            }],
            queue_throughput: c("Requests per day"),
            queue_depth: c("Queue depth by status (now)"),
            boletos: c("Boleto outcomes per consultant"),
        }
    }

    /// A contract number, a service's error or a job name is text on the page, never markup.
    #[test]
    fn hostile_values_are_escaped_in_the_report() {
        let html = crate::templates::render(
            "report.html",
            page(
                "<script>alert(1)</script>",
                r#"Nio said "no" & <b>closed</b>"#,
                "<img src=x>",
            ),
        )
        .unwrap();
        assert!(!html.contains("<script") && !html.contains("<b>"), "{html}");
        assert!(
            html.contains("<tr><td>&lt;script&gt;alert(1)&lt;&#x2f;script&gt;</td><td>1</td><td>1200</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<td>3</td><td>Nio said &quot;no&quot; &amp; &lt;b&gt;closed&lt;&#x2f;b&gt;</td></tr>"
            ),
            "{html}"
        );
        assert!(
            html.contains(r#"text-anchor="end">&lt;img src=x&gt;</text>"#),
            "{html}"
        );
        assert_eq!(html.matches("<svg").count(), 7);
        assert_eq!(html.matches("no data yet").count(), 6);
        assert!(html.ends_with("</body></html>\n"));
    }
}
