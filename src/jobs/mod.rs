//! One file per subcommand: its clap `Args` and its `run`. This module holds what they share:
//! the resolved context (config, clock, printer, paths) and the dispatch.

pub mod cleanup;
pub mod completions;
pub mod config;
pub mod credentials;
#[cfg(feature = "sandbox")]
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
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod schedule;
pub mod status;
pub mod sync_queue;

use std::path::PathBuf;

use anyhow::Result;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::config::{self as cfg, Loaded};
use crate::exit::CodedError;
use crate::job::Job;
use crate::lifecycle::{AfterRun, JobRun};
use crate::metrics::Metrics;
use crate::output::{OutputOptions, Printer};
use crate::pings::Pings;
use crate::store::Store;

/// What every command gets: the configuration, the clock and the printer.
pub struct Ctx {
    pub output: OutputOptions,
    /// The schedule (`[schedule]` over the built-in entries), checked.
    pub plan: Vec<crate::timers::Planned>,
    /// What runs after each job run (alerts, metrics, pings), from the configuration.
    pub after_run: AfterRun,
    /// `--db`: the store to use instead of `[store] path`.
    pub db: Option<PathBuf>,
    pub loaded: Loaded,
    pub clock: Clock,
    pub printer: Printer,
}

impl Ctx {
    /// Loads the configuration (`config`: `--config`), the clock and the services' settings.
    pub fn load(
        config: Option<&std::path::Path>,
        db: Option<PathBuf>,
        output: OutputOptions,
    ) -> Result<Ctx> {
        let loaded = cfg::load(config)?;
        let clock = Clock::from_env().map_err(|e| CodedError::config(format!("{e:#}")))?;
        let printer = Printer::new(&output);
        crate::http::configure(&loaded.config.tls)?;
        // Planned once: the command-line check, alerts, `status` and `schedule` read this.
        let plan = crate::timers::plan(&loaded.config)?;
        let mut after_run = AfterRun {
            alerts: Alerts::default(),
            metrics: Metrics {
                dir: loaded.config.metrics.textfile_dir.clone(),
            },
            pings: Pings {
                urls: loaded.config.pings.clone(),
            },
        };
        if loaded.config.alerts.to.is_some() {
            let smtp = &loaded.config.smtp;
            let password = match smtp.user {
                Some(_) => cfg::secret("CRM_JOBS_SMTP_PASSWORD", smtp.password_file.as_deref())?,
                None => None,
            };
            after_run.alerts = Alerts::from_config(&loaded.config, &plan, password);
        }
        Ok(Ctx {
            output,
            plan,
            after_run,
            db,
            loaded,
            clock,
            printer,
        })
    }

    /// Starts a run of `job` (see [`JobRun::start`]) with this command's store, clock and what
    /// runs after it.
    pub fn start_run(
        &self,
        job: Job,
        lock: &str,
        origin: &str,
        safra: Option<&str>,
    ) -> Result<JobRun> {
        JobRun::start(
            &self.store_path()?,
            self.clock,
            &self.after_run,
            job,
            lock,
            origin,
            safra,
        )
    }

    /// The store path in force.
    pub fn store_path(&self) -> Result<PathBuf> {
        self.loaded.store_path(self.db.as_deref())
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
