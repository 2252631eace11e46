//! `crm-jobs demo`: the README's first command. Starts the sandbox in this process, writes a
//! fresh config, store and sample spreadsheets into a temporary folder, runs every job as an
//! operator would (this same binary, as child processes, with their real output), and ends with
//! what to look at.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrono::Datelike;

use crate::exit::Code;
use crate::output::OutputOptions;
use crate::sandbox::{DEFAULT_PASSPHRASE, Fault, Route, Sandbox, scenario};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sample contracts.
    #[arg(long, default_value_t = 40)]
    pub contracts: usize,
    /// Sample consórcio clients.
    #[arg(long, default_value_t = 24)]
    pub clients: usize,
    /// Latency of the sandbox, in milliseconds (plus up to as much again of jitter).
    #[arg(long, default_value_t = 25)]
    pub latency_ms: u64,
}

pub async fn run(args: Args, global: &OutputOptions) -> Result<Code> {
    let dir = tempfile::Builder::new()
        .prefix("crm-jobs-demo-")
        .tempdir()
        .context("cannot create the demo folder")?
        .keep();
    let sandbox = Sandbox::start(DEFAULT_PASSPHRASE, 0)?;
    sandbox.faults.set_latency(args.latency_ms, args.latency_ms);
    let today = crate::clock::Clock::from_env()?.today();
    let s = scenario::build(
        &sandbox.nio,
        args.contracts,
        today,
        scenario::Options { varied: true },
    );
    std::fs::write(dir.join("contracts.csv"), &s.contracts_csv)?;
    std::fs::write(dir.join("invoices.csv"), &s.invoices_csv)?;
    let config = format!(
        r#"# crm-jobs demo configuration (see config.example.toml for every key)
[store]
path = "crm-jobs.db"

[downloads]
dir = "downloads"

[nio]
base_url = "{}"
pdf_url_template = "{}"
concurrency = 8
request_retries = 1
retry_backoff_ms = 200

[canopus]
base_url = "{}"
concurrency = 4

[crm]
base_url = "{}"
# The real limit is 100 a minute; the sandbox's is wider, so the demo does not wait.
rate_limit_per_minute = 1200

[stripe]
base_url = "{}"

[smtp]
host = "127.0.0.1"
port = {}
tls = "none"
user = "{}"
from = "Equipe Painel <nao-responda@painel.example>"
"#,
        sandbox.nio_base_url(),
        sandbox.nio_pdf_template(),
        sandbox.canopus_base_url(),
        sandbox.crm_base_url(),
        sandbox.stripe_base_url(),
        sandbox.smtp.addr().port(),
        crate::sandbox::SMTP_USER
    );
    std::fs::write(
        dir.join("subscriptions.jsonl"),
        scenario::subscriptions(&sandbox.stripe, chrono::Utc::now(), args.clients),
    )?;
    std::fs::write(
        dir.join("erp-changes.jsonl"),
        scenario::erp_changes(args.clients),
    )?;
    sandbox.canopus.add_user("24627", "senha-do-portal");
    let due = today.with_day(10).unwrap_or(today);
    let rows = scenario::consorcio(&sandbox.canopus, args.clients, due);
    scenario::write_sheet(
        &dir.join("DENER__PLANILHA_GERAL.xlsx"),
        "DENER",
        "17308",
        &rows,
    )?;
    let fernet_key = crate::secret_box::generate_key();
    std::fs::write(dir.join("config.toml"), config)?;
    // A few transient failures, so that the retry machinery shows itself.
    sandbox.faults.push(
        Route::NioDebts,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        6,
    );
    sandbox.faults.push(Route::NioDebts, Fault::Reset, 1);

    eprintln!(
        "crm-jobs demo: sandbox on http://{}, files in {}",
        sandbox.addr,
        dir.display()
    );
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let limit = args.contracts.to_string();
    let steps: &[(&[&str], Option<&str>)] = &[
        (&["config", "check"], None),
        (&["import", "contracts", "contracts.csv"], None),
        (&["import", "invoices", "invoices.csv"], None),
        (
            &["fetch-invoices", "--limit", &limit, "--origin", "manual"],
            None,
        ),
        (&["retry"], None),
        (
            &[
                "export",
                "invoices",
                "--format",
                "csv",
                "--out",
                "invoices-export.csv",
            ],
            None,
        ),
        (
            &[
                "credentials",
                "set",
                "--ponto-venda",
                "17.308",
                "--usuario",
                "24627",
                "--password-stdin",
            ],
            Some("senha-do-portal\n"),
        ),
        (&["credentials", "list"], None),
        (
            &[
                "import",
                "clients",
                "DENER__PLANILHA_GERAL.xlsx",
                "--consultor",
                "DENER",
            ],
            None,
        ),
        (&["download-boletos", "--ponto-venda", "17.308"], None),
        (&["import", "subscriptions", "subscriptions.jsonl"], None),
        (&["renew"], None),
        (&["enqueue", "erp-changes.jsonl"], None),
        (&["sync-queue"], None),
        (
            &[
                "export",
                "queue",
                "--format",
                "csv",
                "--out",
                "queue-export.csv",
            ],
            None,
        ),
        (&["cleanup", "--dry-run"], None),
        (&["cleanup"], None),
        (
            &[
                "export",
                "boletos",
                "--format",
                "csv",
                "--out",
                "boletos-export.csv",
            ],
            None,
        ),
        (&["status"], None),
        (&["schedule", "list"], None),
        (&["report", "--out", "report.html"], None),
    ];
    for (step, stdin) in steps {
        let code = run_step(&exe, &dir, step, *stdin, &fernet_key, global).await?;
        // A job may end `failed` on the sandbox's bad cases; the commands around them may not.
        let job = matches!(
            step[0],
            "fetch-invoices" | "retry" | "download-boletos" | "sync-queue" | "enqueue" | "renew"
        );
        if !(code == 0 || job && matches!(code, 1 | 3)) {
            bail!("demo step `crm-jobs {}` exited {code}", step.join(" "));
        }
    }
    let export = std::fs::read_to_string(dir.join("invoices-export.csv")).unwrap_or_default();
    eprintln!();
    eprintln!("== first lines of invoices-export.csv ==");
    for line in export.lines().take(4) {
        eprintln!("{}", shorten(line, 160));
    }
    eprintln!();
    eprintln!("== what to look at ==");
    eprintln!("  folder:    {}", dir.display());
    eprintln!("  config:    {}", dir.join("config.toml").display());
    eprintln!(
        "  store:     sqlite3 {} 'SELECT id, job, status, items_total, items_ok, items_failed, duration_ms FROM runs'",
        dir.join("crm-jobs.db").display()
    );
    eprintln!(
        "  invoices:  sqlite3 {} 'SELECT fetch_status, match_outcome, COUNT(*) FROM invoices GROUP BY 1, 2'",
        dir.join("crm-jobs.db").display()
    );
    eprintln!(
        "  PDFs:      {}",
        dir.join("downloads").join("faturas").display()
    );
    eprintln!("  export:    {}", dir.join("invoices-export.csv").display());
    eprintln!(
        "  report:    {} (open it in a browser)",
        dir.join("report.html").display()
    );
    eprintln!("  queue:     {}", dir.join("queue-export.csv").display());
    eprintln!(
        "  emails:    the sandbox's SMTP server received {} message(s); sqlite3 {} 'SELECT kind, to_address, status FROM email_outbox'",
        sandbox.smtp.received().len(),
        dir.join("crm-jobs.db").display()
    );
    eprintln!(
        "  explore:   CRM_JOBS_CONFIG={} crm-jobs export invoices --format json --contract 7000100",
        dir.join("config.toml").display()
    );
    Ok(Code::Success)
}

async fn run_step(
    exe: &Path,
    dir: &Path,
    step: &[&str],
    stdin: Option<&str>,
    fernet_key: &str,
    global: &OutputOptions,
) -> Result<i32> {
    eprintln!();
    eprintln!("$ crm-jobs {}", step.join(" "));
    let mut cmd = Command::new(exe);
    cmd.args(step).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("CRM_JOBS_")) {
            cmd.env_remove(k);
        }
    }
    cmd.env("CRM_JOBS_CONFIG", dir.join("config.toml"))
        .env("CRM_JOBS_NIO_PASSPHRASE", DEFAULT_PASSPHRASE)
        .env("CRM_JOBS_FERNET_KEY", fernet_key)
        .env(
            "CRM_JOBS_CRM_ACCESS_TOKEN",
            crate::sandbox::crm::ACCESS_TOKEN,
        )
        .env(
            "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN",
            crate::sandbox::crm::SECRET_TOKEN,
        )
        .env(
            "CRM_JOBS_STRIPE_SECRET_KEY",
            crate::sandbox::stripe::SECRET_KEY,
        )
        .env("CRM_JOBS_SMTP_PASSWORD", crate::sandbox::SMTP_PASSWORD);
    if global.quiet {
        cmd.arg("--quiet");
    }
    let input = stdin.map(str::to_string);
    if input.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let status = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut pipe)) = (input, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(text.as_bytes())?;
        }
        child.wait()
    })
    .await?
    .context("cannot start a demo step")?;
    let code = status.code().unwrap_or(1);
    let meaning = match code {
        0 => "success",
        1 => "the run failed; its run row says why",
        3 => "some items failed; they are recorded and will be retried",
        _ => "failure",
    };
    eprintln!("→ exit {code} ({meaning})");
    Ok(code)
}

fn shorten(line: &str, max: usize) -> String {
    if line.chars().count() <= max {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(max).collect::<String>())
    }
}
