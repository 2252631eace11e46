//! One file per subcommand: its clap `Args` and its `run`. This module holds what they share:
//! the resolved context (config, clock, printer, paths) and the dispatch.

pub mod cleanup;
pub mod completions;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod doctor;
pub mod download_boletos;
pub mod enqueue;
pub mod export;
pub mod fetch_invoices;
pub mod import;
pub mod pause;
pub mod renew;
pub mod report;
pub mod retry;
pub mod sandbox;
pub mod schedule;
pub mod status;
pub mod sync_queue;

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::clock::Clock;
use crate::config::{self as cfg, Loaded};
use crate::exit::{Code, CodedError};
use crate::output::Printer;
use crate::store::Store;

/// What every command gets: the configuration, the clock and the printer.
pub struct Ctx {
    pub global: GlobalArgs,
    pub loaded: Loaded,
    pub clock: Clock,
    pub printer: Printer,
}

impl Ctx {
    fn load(global: GlobalArgs) -> Result<Ctx> {
        let loaded = cfg::load(global.config.as_deref())?;
        let clock = Clock::from_env().map_err(|e| CodedError::config(format!("{e:#}")))?;
        let printer = Printer::new(&global);
        crate::http::configure(&loaded.config.tls)?;
        crate::metrics::configure(loaded.config.metrics.textfile_dir.clone());
        crate::pings::configure(loaded.config.pings.clone());
        if loaded.config.alerts.to.is_some() {
            let smtp = &loaded.config.smtp;
            let password = match smtp.user {
                Some(_) => cfg::secret("CRM_JOBS_SMTP_PASSWORD", smtp.password_file.as_deref())?,
                None => None,
            };
            crate::alerts::configure(&loaded.config, password);
        }
        Ok(Ctx {
            global,
            loaded,
            clock,
            printer,
        })
    }

    /// The store path in force.
    pub fn store_path(&self) -> Result<PathBuf> {
        self.loaded.store_path(self.global.db.as_deref())
    }

    /// Opens the store.
    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.store_path()?)
    }

    /// Opens the store for a command that only reads it: read-only when this user may not
    /// write it ([`Store::open_for_reading`]).
    pub fn open_store_for_reading(&self) -> Result<Store> {
        Store::open_for_reading(&self.store_path()?)
    }

    /// The downloads root in force.
    pub fn downloads_dir(&self) -> Result<PathBuf> {
        Ok(self.loaded.downloads_dir(&self.store_path()?))
    }

    /// `[nio] base_url`, which has no default: a config error when unset.
    pub fn require_nio_base_url(&self) -> Result<&str> {
        self.loaded.config.nio.base_url.as_deref().ok_or_else(|| {
            CodedError::config(
                "`[nio] base_url` is not set: set it in the config file or `CRM_JOBS_NIO_BASE_URL` (the real site is https://negociacao.niointernet.com.br)",
            )
        })
    }

    /// The Nio passphrase, or a config error saying where to put it.
    pub fn nio_passphrase(&self) -> Result<String> {
        cfg::secret(
            "CRM_JOBS_NIO_PASSPHRASE",
            self.loaded.config.nio.passphrase_file.as_deref(),
        )?
        .ok_or_else(|| {
            CodedError::config(
                "the Nio passphrase is not set: export `CRM_JOBS_NIO_PASSPHRASE`, or point `[nio] passphrase_file` (or `CRM_JOBS_NIO_PASSPHRASE_FILE`) to a file holding it",
            )
        })
    }
}

/// Runs the chosen subcommand.
pub async fn dispatch(cli: Cli) -> Result<Code> {
    match cli.command {
        Command::Sandbox(args) => sandbox::run(args).await,
        Command::Demo(args) => demo::run(args, &cli.global).await,
        Command::Completions(args) => completions::completions(args),
        Command::Man => completions::man(),
        command => {
            let ctx = Ctx::load(cli.global)?;
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
                Command::Sandbox(_) | Command::Demo(_) | Command::Completions(_) | Command::Man => {
                    unreachable!("handled above")
                }
            }
        }
    }
}
