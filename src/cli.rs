//! The command line: global options and the list of subcommands. Each subcommand's arguments
//! live with the subcommand, in `src/jobs/`.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::exit::Code;
use crate::jobs;
pub use crate::output::LogFormat;
use crate::output::OutputOptions;

/// Back-office jobs for cron and systemd timers, over one SQLite store.
///
/// Every job is a short-lived process: it takes its lock, records a run, does its work and exits
/// with a code that says how it went.
#[derive(Debug, Parser)]
#[command(
    name = "crm-jobs",
    version,
    about,
    propagate_version = true,
    after_help = "Exit codes: 0 done, 1 the run failed, 2 bad command line, 3 some items failed (recorded, will be retried), 75 the job is already running, 78 bad configuration or credentials a service refused, 130/143 stopped by SIGINT/SIGTERM."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every subcommand.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Configuration file (else `CRM_JOBS_CONFIG`, else ~/.config/crm-jobs/config.toml, else
    /// /etc/crm-jobs/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// SQLite store to use instead of `[store] path`.
    #[arg(long, global = true, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Print only warnings and errors: no progress, no per-item lines, no summary.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More detail in the logs (-v debug, -vv trace). Full CPFs are still masked.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print the result (the run's summary, an export) as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Format of the log lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// The options that concern output, for the layers below the command line.
    pub fn output(&self) -> OutputOptions {
        OutputOptions {
            quiet: self.quiet,
            verbose: self.verbose,
            json: self.json,
            log_format: self.log_format,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch the open invoices of due contracts from the Nio API and match them.
    FetchInvoices(jobs::fetch_invoices::Args),
    /// Re-attempt invoices whose last attempt failed transiently; give up at the limit.
    Retry(jobs::retry::Args),
    /// Download the month's consórcio boletos from the Canopus portal, per sales point.
    DownloadBoletos(jobs::download_boletos::Args),
    /// Manage the portal credentials of the sales points (stored encrypted).
    #[command(subcommand)]
    Credentials(jobs::credentials::Command),
    /// Add ERP changes (JSON lines) to the CRM outbox.
    Enqueue(jobs::enqueue::Args),
    /// Send the CRM outbox: priorities, shared rate limit, backoff, CRM ids.
    SyncQueue(jobs::sync_queue::Args),
    /// Subscriptions: warn those expiring, expire overdue ones, renew from Stripe, send the emails.
    Renew(jobs::renew::Args),
    /// Remove rows past their retention, in small batches, then checkpoint the WAL.
    Cleanup(jobs::cleanup::Args),
    /// Import operator spreadsheets (CSV, consultant XLSX) into the store.
    #[command(subcommand)]
    Import(jobs::import::Command),
    /// Export what the store knows, for the CRM or a spreadsheet.
    #[command(subcommand)]
    Export(jobs::export::Command),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(jobs::config::Command),
    /// Every job's last run, runs in progress, pauses, and the work waiting.
    Status(jobs::status::Args),
    /// The schedule (`[schedule]`): list it, or write the crontab or the systemd timers.
    #[command(subcommand)]
    Schedule(jobs::schedule::Command),
    /// Write one self-contained HTML page with charts of the runs, invoices, queue and boletos.
    Report(jobs::report::Args),
    /// Check configuration, secrets, store, files and the services' reachability.
    Doctor(jobs::doctor::Args),
    /// Pause a job: its starts exit 0 at once (recorded) until `resume`.
    Pause(jobs::pause::PauseArgs),
    /// Resume a paused job.
    Resume(jobs::pause::ResumeArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(jobs::completions::Args),
    /// Print the man page (roff).
    Man,
    /// Serve the built-in sandbox (fake services) in the foreground for manual tries.
    #[cfg(feature = "sandbox")]
    Sandbox(jobs::sandbox::Args),
    /// Run every job end to end against the built-in sandbox, in a temporary folder.
    #[cfg(feature = "sandbox")]
    Demo(jobs::demo::Args),
}

/// Runs the chosen subcommand.
pub async fn dispatch(cli: Cli) -> anyhow::Result<Code> {
    use jobs::*;
    let output = cli.global.output();
    match cli.command {
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => sandbox::run(args).await,
        #[cfg(feature = "sandbox")]
        Command::Demo(args) => demo::run(args, &output).await,
        Command::Completions(args) => completions::completions(args, Cli::command()),
        Command::Man => completions::man(Cli::command()),
        command => {
            let ctx = Ctx::load(cli.global.config.as_deref(), cli.global.db, output)?;
            check_schedule(&ctx.plan)?;
            match command {
                Command::FetchInvoices(args) => fetch_invoices::run(&ctx, args).await,
                Command::Retry(args) => retry::run(&ctx, args).await,
                Command::DownloadBoletos(args) => download_boletos::run(&ctx, args).await,
                Command::Credentials(c) => credentials::run(&ctx, c),
                Command::Enqueue(args) => enqueue::run(&ctx, args),
                Command::SyncQueue(args) => sync_queue::run(&ctx, args).await,
                Command::Cleanup(args) => cleanup::run(&ctx, args).await,
                Command::Renew(args) => renew::run(&ctx, args).await,
                Command::Status(args) => status::run(&ctx, args),
                Command::Schedule(c) => schedule::run(&ctx, c),
                Command::Report(args) => report::run(&ctx, args),
                Command::Doctor(args) => doctor::run(&ctx, args).await,
                Command::Pause(args) => pause::pause(&ctx, args),
                Command::Resume(args) => pause::resume(&ctx, args),
                Command::Import(c) => import::run(&ctx, c),
                Command::Export(c) => export::run(&ctx, c),
                Command::Config(c) => config::run(&ctx, c),
                #[cfg(feature = "sandbox")]
                Command::Sandbox(_) | Command::Demo(_) => unreachable!("handled above"),
                Command::Completions(_) | Command::Man => unreachable!("handled above"),
            }
        }
    }
}

/// Checks each command line of the schedule (`command`, `then`; the entries themselves were
/// checked by [`crate::timers::plan`]) against the arguments of its own subcommand, when the
/// configuration loads, so that a misspelt flag is a configuration error now rather than a
/// failed start at 3 a.m.
fn check_schedule(plan: &[crate::timers::Planned]) -> anyhow::Result<()> {
    let mut cli = Cli::command();
    cli.build();
    for p in plan {
        let lines =
            std::iter::once(("command", &p.command)).chain(p.then.iter().map(|t| ("then", t)));
        for (key, words) in lines {
            if let Err(why) = check_command_line(&cli, words) {
                return Err(crate::exit::CodedError::config(format!(
                    "`[schedule.{}] {key}` = `{}` is not a crm-jobs command line: {why}",
                    p.name,
                    words.join(" ")
                )));
            }
        }
    }
    Ok(())
}

/// Parses `words` (a subcommand and its flags) with that subcommand's own arguments (and the
/// global options: `cli` is the built command line), not the whole command line; the first
/// line of clap's error otherwise.
fn check_command_line(cli: &clap::Command, words: &[String]) -> Result<(), String> {
    let Some((first, rest)) = words.split_first() else {
        return Err("it is empty".into());
    };
    let Some(sub) = cli.find_subcommand(first) else {
        return Err(format!("unrecognized subcommand '{first}'"));
    };
    sub.clone()
        .no_binary_name(true)
        .try_get_matches_from(rest)
        .map(drop)
        .map_err(|e| {
            e.to_string()
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn check_command_line(words: &[String]) -> Result<(), String> {
        let mut cli = Cli::command();
        cli.build();
        super::check_command_line(&cli, words)
    }

    #[test]
    fn a_scheduled_command_is_checked_against_its_own_subcommand() {
        assert_eq!(
            check_command_line(&words("fetch-invoices --limit 20 --quiet")),
            Ok(())
        );
        assert_eq!(check_command_line(&words("renew --step emails")), Ok(()));
        let e = check_command_line(&words("fetch-invoices --limt 20")).unwrap_err();
        assert!(e.contains("--limt"), "{e}");
        let e = check_command_line(&words("fetch --limit 20")).unwrap_err();
        assert!(e.contains("fetch"), "{e}");
    }

    #[test]
    fn a_misspelt_flag_in_the_schedule_names_its_key() {
        let mut c = crate::config::Config::default();
        c.schedule.insert(
            "fetch-invoices".into(),
            crate::config::ScheduleEntry {
                command: Some("fetch-invoices --limt 20".into()),
                ..Default::default()
            },
        );
        let plan = crate::timers::plan(&c).unwrap();
        let e = format!("{:#}", check_schedule(&plan).unwrap_err());
        assert!(e.contains("[schedule.fetch-invoices] command"), "{e}");
        assert!(e.contains("--limt"), "{e}");
    }
}
