//! `crm-jobs sandbox`: serves the built-in fakes of the outside world in the foreground, with
//! sample data, for manual tries. Faults are switched over HTTP under `/_sandbox/`.

use std::path::PathBuf;

use anyhow::Result;
use chrono::Datelike;

use crate::exit::Code;
use crate::sandbox::{DEFAULT_PASSPHRASE, Sandbox, scenario};

/// Arguments of `sandbox`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8700)]
    pub port: u16,
    /// Sample contracts (and consórcio clients) to create.
    #[arg(long, default_value_t = 20)]
    pub contracts: usize,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Write the sample contracts CSV here.
    #[arg(long, value_name = "FILE")]
    pub write_csv: Option<PathBuf>,
    /// Write a sample consultant spreadsheet (.xlsx) of the portal's clients here.
    #[arg(long, value_name = "FILE")]
    pub write_xlsx: Option<PathBuf>,
}

/// The sandbox portal's user and password (sales point 17.308).
const PORTAL_USER: &str = "24627";
const PORTAL_PASSWORD: &str = "sandbox-portal";

pub async fn run(args: Args) -> Result<Code> {
    let sandbox = Sandbox::start(DEFAULT_PASSPHRASE, args.port)?;
    sandbox.faults.set_latency(args.latency_ms, 0);
    let today = crate::clock::Clock::from_env()?.today();
    let s = scenario::build(
        &sandbox.nio,
        args.contracts,
        today,
        scenario::Options { varied: true },
    );
    if let Some(path) = &args.write_csv {
        std::fs::write(path, &s.contracts_csv)?;
        eprintln!(
            "wrote {} sample contracts to `{}`",
            s.contracts,
            path.display()
        );
    }
    sandbox.canopus.add_user(PORTAL_USER, PORTAL_PASSWORD);
    let rows = scenario::consorcio(
        &sandbox.canopus,
        args.contracts,
        today.with_day(10).unwrap_or(today),
    );
    if let Some(path) = &args.write_xlsx {
        scenario::write_sheet(path, "DENER", "17308", &rows)?;
        eprintln!(
            "wrote {} sample consórcio clients to `{}`",
            rows.len(),
            path.display()
        );
    }
    eprintln!("sandbox listening on http://{}", sandbox.addr);
    eprintln!();
    eprintln!("  [nio]");
    eprintln!("  base_url = \"{}\"", sandbox.nio_base_url());
    eprintln!("  pdf_url_template = \"{}\"", sandbox.nio_pdf_template());
    eprintln!();
    eprintln!("  [canopus]");
    eprintln!("  base_url = \"{}\"", sandbox.canopus_base_url());
    eprintln!();
    eprintln!("  export CRM_JOBS_NIO_PASSPHRASE='{DEFAULT_PASSPHRASE}'");
    eprintln!("  portal: sales point 17.308, user {PORTAL_USER}, password {PORTAL_PASSWORD}");
    eprintln!();
    eprintln!(
        "faults: POST /_sandbox/fault {{\"route\": \"nio_debts\", \"fault\": {{\"status\": {{\"status\": 503}}}}, \"times\": 2}}"
    );
    eprintln!("        POST /_sandbox/latency {{\"latency_ms\": 50}}; GET /_sandbox/stats");
    eprintln!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await.ok();
    drop(sandbox);
    Ok(Code::Success)
}
