//! `crm-jobs download-boletos`: for each sales point, log in to the Canopus portal (once per
//! session), search each client by CPF, open each quota, emit the month's boleto and save the
//! PDF as `{downloads}/{CONSULTOR}/{NOME}_{MES}.pdf`. One outcome per client: `success`,
//! `cpf_not_found`, `no_boleto` or `error`. A failed login stops that sales point only; an
//! interrupted run resumes without downloading again what is done for the month.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::{Datelike, NaiveDate};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::Ctx;
use crate::boleto_files;
use crate::canopus::{BoletoRow, Portal, PortalError, QuotaLink};
use crate::clock::{self, Clock};
use crate::config::CanopusConfig;
use crate::config::{QuotaChoice, RowChoice};
use crate::domain::boleto;
use crate::domain::cpf::Cpf;
use crate::exit::{Code, CodedError};
use crate::files;
use crate::job::Job;
use crate::lifecycle::JobRun;
use crate::store::{BoletoOutcome, BoletoRecord, BoletoSelection, ClientWork, Store};

/// Arguments of `download-boletos`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sales point, e.g. `17.308` (default: every sales point with credentials).
    #[arg(long = "ponto-venda", value_name = "CODE")]
    pub ponto_venda: Option<String>,
    /// Year of the boletos (default: this year in America/Sao_Paulo).
    #[arg(long, value_name = "YYYY", value_parser = clap::value_parser!(i32).range(2000..=2100))]
    pub ano: Option<i32>,
    /// Month of the boletos, 1 to 12 (default: this month).
    #[arg(long, value_name = "MM", value_parser = clap::value_parser!(u32).range(1..=12))]
    pub mes: Option<u32>,
    /// At most this many clients per sales point.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limite: Option<u32>,
    /// Only this client (taken again even if done this month).
    #[arg(long, value_name = "CPF")]
    pub cpf: Option<String>,
    /// Only the clients of this consultant.
    #[arg(long, value_name = "NAME")]
    pub consultor: Option<String>,
    /// Portal sessions at once per sales point, 1 to 16 (default `[canopus] concurrency`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub concurrency: Option<u32>,
    /// List the clients this run would take, and stop: no login, no write.
    #[arg(long)]
    pub dry_run: bool,
}

/// What happened to one quota.
enum QuotaOutcome {
    Saved {
        quota: String,
        row: BoletoRow,
        pdf: Vec<u8>,
    },
    AlreadyDone {
        quota: String,
    },
    NoBoleto {
        quota: String,
        detail: String,
    },
    Failed {
        quota: String,
        error: String,
    },
}

impl QuotaOutcome {
    fn failed(&self) -> bool {
        matches!(self, QuotaOutcome::Failed { .. })
    }

    fn quota(&self) -> &str {
        match self {
            QuotaOutcome::Saved { quota, .. }
            | QuotaOutcome::AlreadyDone { quota }
            | QuotaOutcome::NoBoleto { quota, .. }
            | QuotaOutcome::Failed { quota, .. } => quota,
        }
    }
}

/// One client's progress in this run, kept across logins: a session that ends in the middle
/// of a client goes on, after logging in again, with the next quota not yet taken.
#[derive(Default)]
struct Progress {
    /// The portal finds no quota for the CPF.
    not_client: bool,
    /// How many quotas are taken (to name files of several quotas apart).
    count: usize,
    quotas: Vec<QuotaOutcome>,
}

impl Progress {
    fn has(&self, quota: &str) -> bool {
        self.quotas.iter().any(|q| q.quota() == quota)
    }
}

/// What a worker reports for one client.
struct ClientDone {
    client: ClientWork,
    progress: Progress,
    /// Why the client could not be finished (its quotas done so far are recorded all the same).
    error: Option<String>,
    elapsed_ms: i64,
}

/// Messages from a sales point's workers.
enum Msg {
    /// A client's result; the worker waits for the acknowledgement before taking the next
    /// client, so that whatever a killed run finished is recorded.
    Client(ClientDone, tokio::sync::oneshot::Sender<()>),
    /// The portal refused the credentials: the sales point stops.
    LoginFailed(String),
    /// A session could not log in for a transient reason even after its tries: that session
    /// stops, the others go on.
    Unreachable(String),
}

#[derive(Clone, Copy)]
struct Target {
    year: i32,
    month: u32,
    today: NaiveDate,
}

/// The clients of a sales point still to take, each with its quotas already saved this month.
type Queue = VecDeque<(ClientWork, Vec<String>)>;

/// What every portal session of a sales point shares.
struct Session {
    cfg: CanopusConfig,
    user: String,
    password: String,
    target: Target,
    /// Where pages of failed steps are saved.
    diagnostics: PathBuf,
    clock: Clock,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Code> {
    let cfg = &ctx.loaded.config.canopus;
    let today = ctx.clock.today();
    let target = Target {
        year: args.ano.unwrap_or(today.year()),
        month: args.mes.unwrap_or(today.month()),
        today,
    };
    let cpf = match &args.cpf {
        Some(c) => Some(Cpf::parse(c).map_err(|e| CodedError {
            code: Code::Usage,
            message: format!("`--cpf`: {e}"),
        })?),
        None => None,
    };
    let consultant = args.consultor.as_deref().map(|c| c.trim().to_uppercase());
    let wanted = match &args.ponto_venda {
        Some(code) => {
            Some(
                super::credentials::sales_point_code(code).ok_or_else(|| CodedError {
                    code: Code::Usage,
                    message: format!(
                        "`--ponto-venda {code}` is not a sales point code (e.g. `17.308`)"
                    ),
                })?,
            )
        }
        None => None,
    };
    let store = if args.dry_run {
        ctx.open_store_for_reading()?
    } else {
        ctx.open_store()?
    };
    let force = cpf.is_some();
    let points: Vec<String> = match &wanted {
        Some(code) => vec![code.clone()],
        None => store
            .sales_points()?
            .into_iter()
            .filter(|p| p.has_password)
            .map(|p| p.code)
            .collect(),
    };
    let cpf_digits = cpf.as_ref().map(|c| c.digits().to_string());
    let selection = |code: String| BoletoSelection {
        sales_point: code,
        year: target.year,
        month: target.month,
        consultant: consultant.clone(),
        cpf: cpf_digits.clone(),
        limit: args.limite,
    };
    if args.dry_run {
        let mut total = 0;
        let mut rows = Vec::new();
        for code in &points {
            for c in store.clients_for_boletos(&selection(code.clone()))? {
                total += 1;
                if ctx.printer.json {
                    rows.push(serde_json::json!({
                        "sales_point": code, "consultant": c.consultant,
                        "cpf": Cpf::parse(&c.cpf).map(|x| x.masked()).unwrap_or_default(),
                        "client": c.name,
                    }));
                    continue;
                }
                crate::outln!(
                    "{code}\t{}\t{}\t{}",
                    c.consultant,
                    Cpf::parse(&c.cpf).map(|x| x.masked()).unwrap_or_default(),
                    c.name
                );
            }
        }
        if ctx.printer.json {
            ctx.printer.json_out(&serde_json::Value::Array(rows));
        }
        ctx.printer.say(&format!(
            "dry run: {total} client(s) would be taken for {:02}/{}; nothing was sent or written",
            target.month, target.year
        ));
        return Ok(Code::Success);
    }
    drop(store);
    let sealer = super::credentials::sealer(ctx)?;
    let base_url = cfg.base_url.clone().ok_or_else(|| {
        CodedError::config("`[canopus] base_url` is not set: set it in the config file or `CRM_JOBS_CANOPUS_BASE_URL` (the real portal is https://cnp3.consorciocanopus.com.br)")
    })?;
    if points.is_empty() {
        return Err(CodedError::config(
            "no sales point has credentials: add them with `crm-jobs credentials set --ponto-venda CODE --usuario USER`",
        ));
    }
    let origin = crate::lifecycle::default_origin();
    let mut run = ctx.start_run(Job::DownloadBoletos, "boletos", origin, None)?;
    let downloads = ctx.downloads_dir()?;
    let mut stopped: Vec<String> = Vec::new();
    for code in &points {
        if run.cancel.is_cancelled() {
            break;
        }
        let work = run.store.clients_for_boletos(&selection(code.clone()))?;
        if work.is_empty() {
            tracing::info!(
                "sales point {code}: no client to do for {:02}/{}",
                target.month,
                target.year
            );
            continue;
        }
        let Some((user, token)) = run.store.credentials(code)? else {
            let m = format!(
                "sales point {code} has no credentials: `crm-jobs credentials set --ponto-venda {code} --usuario USER`"
            );
            tracing::warn!("{m}");
            run.event("warn", m.clone());
            stopped.push(m);
            continue;
        };
        let password = match sealer.decrypt(&token) {
            Ok(p) => p,
            Err(e) => {
                let m = format!("sales point {code}: {e}");
                tracing::warn!("{m}");
                run.event("warn", m.clone());
                stopped.push(m);
                continue;
            }
        };
        // A folder name from the store (a host may have written it) is made safe again.
        let work: Vec<ClientWork> = work
            .into_iter()
            .map(|c| ClientWork {
                folder: boleto_files::folder_name(&c.folder),
                ..c
            })
            .collect();
        for folder in work
            .iter()
            .map(|c| c.folder.clone())
            .collect::<std::collections::BTreeSet<_>>()
        {
            files::remove_stale_parts(&downloads.join(&folder));
        }
        let concurrency = args.concurrency.unwrap_or(cfg.concurrency) as usize;
        if let Some(m) = sales_point(
            &mut run,
            cfg,
            &base_url,
            code,
            &user,
            &password,
            work,
            &target,
            &downloads,
            concurrency,
            force,
            ctx,
        )
        .await?
        {
            stopped.push(m);
        }
    }
    let n = |k: &str| run.counters.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    let mut detail = format!(
        "{} client(s) for {:02}/{}: {} success, {} cpf_not_found, {} no_boleto, {} error; {} file(s) saved",
        run.counts.total,
        target.month,
        target.year,
        n("success"),
        n("cpf_not_found"),
        n("no_boleto"),
        n("error"),
        n("files")
    );
    if n("already_done") > 0 {
        detail.push_str(&format!(", {} already done", n("already_done")));
    }
    let stop = if !stopped.is_empty() && run.counts.total == 0 {
        Some(anyhow!(stopped.join("; ")))
    } else {
        run.counts.failed += stopped.len() as i64;
        if !stopped.is_empty() {
            detail.push_str(&format!("; {} sales point(s) stopped", stopped.len()));
        }
        None
    };
    run.finish(&ctx.printer, stop, &detail)
}

/// Runs one sales point; returns why it stopped early, if it did (a refused login, or no
/// session able to log in).
#[allow(
    clippy::too_many_arguments,
    reason = "one sales point's credentials and the run's settings, each read once here"
)]
async fn sales_point(
    run: &mut JobRun,
    cfg: &CanopusConfig,
    base_url: &str,
    code: &str,
    user: &str,
    password: &str,
    work: Vec<ClientWork>,
    target: &Target,
    downloads: &Path,
    concurrency: usize,
    force: bool,
    ctx: &Ctx,
) -> Result<Option<String>> {
    let total = work.len();
    let mut jobs = VecDeque::new();
    for c in work {
        // `--cpf` downloads again; otherwise quotas saved this month (file present) are skipped.
        let done = if force {
            Vec::new()
        } else {
            quotas_done(&run.store, &c, target)?
        };
        jobs.push_back((c, done));
    }
    let session = Arc::new(Session {
        cfg: cfg.clone(),
        user: user.to_string(),
        password: password.to_string(),
        target: *target,
        diagnostics: crate::diagnostics::folder(&ctx.store_path()?),
        clock: ctx.clock,
    });
    // One session logs in first: a wrong password is tried once, not by every session.
    let mut first = Portal::new(cfg, base_url)?;
    if let Err(e) = login(&session, &mut first).await {
        let m = format!(
            "sales point {code}: {e}; its clients were left {}",
            if matches!(e, PortalError::Transient(_)) {
                "for the next run"
            } else {
                "untouched"
            }
        );
        tracing::warn!("{m}");
        run.event("warn", m.clone());
        run.add("login_failed", 1);
        return Ok(Some(m));
    }
    let mut first = Some(first);
    run.plan(total);
    let bar = ctx.printer.progress(total as u64, &format!("PV {code}"));
    let queue = Arc::new(Mutex::new(jobs));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(total).max(1) {
        let portal = match first.take() {
            Some(p) => p,
            None => Portal::new(cfg, base_url)?,
        };
        workers.spawn(worker(
            session.clone(),
            portal,
            queue.clone(),
            stop.clone(),
            tx.clone(),
            run.cancel.clone(),
        ));
    }
    drop(tx);
    let cancel = run.cancel.clone();
    let mut stopped_by = None;
    let mut unreachable = None;
    crate::lifecycle::collect(&mut rx, &mut workers, &cancel, "clients", |msg| {
        match msg {
            Msg::LoginFailed(m) => {
                if stopped_by.is_none() {
                    let m = format!("sales point {code}: {m}; its clients were left untouched");
                    tracing::warn!("{m}");
                    run.event("warn", m.clone());
                    run.add("login_failed", 1);
                    stopped_by = Some(m);
                }
            }
            Msg::Unreachable(m) => {
                tracing::warn!("sales point {code}: a portal session could not log in ({m}); the other sessions go on");
                unreachable = Some(m);
            }
            Msg::Client(done, ack) => {
                bar.set_message(done.client.name.clone());
                record_client(run, &ctx.printer, ctx.clock, downloads, target, done)?;
                ack.send(()).ok();
                bar.inc(1);
            }
        }
        Ok(())
    })
    .await?;
    ctx.printer.finish_progress(&bar);
    let left = queue.lock().expect("queue").len();
    if stopped_by.is_none()
        && left > 0
        && !cancel.is_cancelled()
        && let Some(m) = unreachable
    {
        let m = format!(
            "sales point {code}: no portal session could log in ({m}); {left} client(s) were left for the next run"
        );
        tracing::warn!("{m}");
        run.event("warn", m.clone());
        stopped_by = Some(m);
    }
    Ok(stopped_by)
}

/// One portal session: logs in when it must, then takes clients from the queue one after the
/// other until it is empty, the run is cancelled or the sales point stops.
async fn worker(
    s: Arc<Session>,
    mut portal: Portal,
    queue: Arc<Mutex<Queue>>,
    stop: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Msg>,
    cancel: crate::lifecycle::Cancel,
) {
    // The first session arrives logged in; the others log in before their first client.
    let mut logged_in = portal.requests() > 0;
    loop {
        if cancel.is_cancelled() || stop.load(Ordering::SeqCst) {
            break;
        }
        if !logged_in {
            match login(&s, &mut portal).await {
                Ok(()) => logged_in = true,
                Err(e @ PortalError::Transient(_)) => {
                    tx.send(Msg::Unreachable(e.to_string())).ok();
                    break;
                }
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    tx.send(Msg::LoginFailed(e.to_string())).ok();
                    break;
                }
            }
        }
        let Some((client, done)) = queue.lock().expect("queue").pop_front() else {
            break;
        };
        let started = Instant::now();
        let mut progress = Progress::default();
        // Logins that brought no new quota: a session that expires again before taking any
        // quota will not do better the next time.
        let mut stalls = 0;
        let error = loop {
            let before = progress.quotas.len();
            let e = match client_boletos(&s, &mut portal, &client, &done, &mut progress).await {
                Ok(()) => break None,
                Err(e) => e,
            };
            match e {
                PortalError::SessionExpired => {
                    stalls = if progress.quotas.len() > before {
                        0
                    } else {
                        stalls + 1
                    };
                    if stalls > 1 {
                        break Some(
                            "the portal session ended again before any quota was taken; the client is tried again next run"
                                .to_string(),
                        );
                    }
                    tracing::debug!("the portal session expired; logging in again to go on");
                    match login(&s, &mut portal).await {
                        Ok(()) => continue,
                        Err(e @ PortalError::LoginFailed(_)) => {
                            stop.store(true, Ordering::SeqCst);
                            tx.send(Msg::LoginFailed(e.to_string())).ok();
                            logged_in = false;
                            break Some(format!("could not log in again: {e}"));
                        }
                        Err(e) => {
                            logged_in = false;
                            break Some(format!("could not log in again: {e}"));
                        }
                    }
                }
                e => break Some(diagnose(&s, &portal, &e)),
            }
        };
        // A failed step leaves the portal wherever it stopped: the next client starts afresh.
        // Otherwise the result page is kept, to search the next client from it.
        if error.is_some() || progress.quotas.iter().any(QuotaOutcome::failed) {
            portal.reset();
        }
        let done = ClientDone {
            client,
            progress,
            error,
            elapsed_ms: started.elapsed().as_millis() as i64,
        };
        let (ack, recorded) = tokio::sync::oneshot::channel();
        if tx.send(Msg::Client(done, ack)).is_err() || recorded.await.is_err() {
            break;
        }
    }
}

/// Logs in; the browser already tried a transient failure again in place.
async fn login(s: &Session, portal: &mut Portal) -> Result<(), PortalError> {
    match portal.login(&s.user, &s.password).await {
        Err(e) if e.is_page_problem() => Err(PortalError::Unexpected(diagnose(s, portal, &e))),
        other => other,
    }
}

/// The message of a failed step; when the page did not hold what the step expected, the page
/// is saved for diagnosis and the message names the file.
fn diagnose(s: &Session, portal: &Portal, e: &PortalError) -> String {
    let message = e.to_string();
    if !e.is_page_problem() {
        return message;
    }
    let Some((step, exchange)) = portal.snapshot() else {
        return message;
    };
    match crate::diagnostics::save(
        &s.diagnostics,
        s.clock.now(),
        "canopus",
        step,
        &exchange,
        &message,
    ) {
        Ok(path) => format!("{message} (page saved to `{}`)", path.display()),
        Err(err) => {
            tracing::warn!("could not save the page of a failed step: {err:#}");
            message
        }
    }
}

/// The quotas of a client already saved for the month, whose files are still there.
fn quotas_done(store: &Store, c: &ClientWork, target: &Target) -> Result<Vec<String>> {
    Ok(store
        .boletos_saved(c.id, target.year, target.month)?
        .into_iter()
        .filter(|(_, path)| Path::new(path).exists())
        .map(|(quota, _)| quota)
        .collect())
}

/// One client's steps on the portal, from where `progress` left it: search the CPF, then each
/// quota not taken yet. Quotas that fail on their own are recorded in `progress`; an expired
/// session or a transient failure is returned, to go on after logging in again.
async fn client_boletos(
    s: &Session,
    portal: &mut Portal,
    client: &ClientWork,
    done: &[String],
    progress: &mut Progress,
) -> Result<(), PortalError> {
    let cfg = &s.cfg;
    let cpf = Cpf::parse(&client.cpf)
        .map_err(|e| PortalError::Unexpected(format!("invalid CPF in the store: {e}")))?;
    let mut links = portal.search(&cpf).await?;
    if links.is_empty() {
        progress.not_client = progress.quotas.is_empty();
        return Ok(());
    }
    let chosen: Vec<QuotaLink> = match cfg.quotas {
        QuotaChoice::First => links.into_iter().take(1).collect(),
        QuotaChoice::Last => links.pop().into_iter().collect(),
        QuotaChoice::Each => links,
    };
    progress.count = chosen.len();
    // After a quota failed on a page the portal may be anywhere: search again before the next.
    let mut search_again = false;
    for link in chosen {
        let quota = link.label.clone();
        if progress.has(&quota) {
            continue;
        }
        if done.contains(&quota) {
            progress.quotas.push(QuotaOutcome::AlreadyDone { quota });
            continue;
        }
        let link = if search_again {
            let again = portal.search(&cpf).await?;
            match again.into_iter().find(|l| l.label == quota) {
                Some(l) => l,
                None => {
                    progress.quotas.push(QuotaOutcome::Failed {
                        quota,
                        error: "the quota was listed, then missing from the same CPF's search"
                            .to_string(),
                    });
                    continue;
                }
            }
        } else {
            link
        };
        search_again = false;
        let (page, rows) = match portal.open_boletos(&cpf, &link).await {
            Ok(x) => x,
            Err(e @ (PortalError::SessionExpired | PortalError::Transient(_))) => return Err(e),
            Err(e) => {
                let error = diagnose(s, portal, &e);
                progress.quotas.push(QuotaOutcome::Failed { quota, error });
                search_again = true;
                continue;
            }
        };
        let (year, month) = (s.target.year, s.target.month);
        let row = match cfg.row {
            RowChoice::Last => rows.last().cloned(),
            RowChoice::Month => rows
                .iter()
                .find(|r| r.due.year() == year && r.due.month() == month)
                .cloned(),
        };
        let Some(row) = row else {
            let listed: Vec<String> = rows
                .iter()
                .map(|r| r.due.format("%m/%Y").to_string())
                .collect();
            let detail = if listed.is_empty() {
                "the portal lists no open installment".to_string()
            } else {
                format!(
                    "no open installment due in {month:02}/{year} (the portal lists {})",
                    listed.join(", ")
                )
            };
            progress
                .quotas
                .push(QuotaOutcome::NoBoleto { quota, detail });
            continue;
        };
        match portal.emit(&page, &row, s.target.today).await {
            Ok(pdf) => progress
                .quotas
                .push(QuotaOutcome::Saved { quota, row, pdf }),
            Err(e @ (PortalError::SessionExpired | PortalError::Transient(_))) => return Err(e),
            Err(e) => {
                let error = diagnose(s, portal, &e);
                progress.quotas.push(QuotaOutcome::Failed { quota, error });
                search_again = true;
            }
        }
    }
    Ok(())
}

/// Records one client's outcome: files written atomically under names that never overwrite
/// another client's file, rows in the store, counters and the item line.
fn record_client(
    run: &mut JobRun,
    printer: &crate::output::Printer,
    clock: Clock,
    downloads: &Path,
    target: &Target,
    done: ClientDone,
) -> Result<()> {
    let c = &done.client;
    let at = clock::to_store(clock.now());
    let who = format!(
        "{} ({}, {})",
        c.name,
        c.consultant,
        Cpf::parse(&c.cpf).map(|x| x.masked()).unwrap_or_default()
    );
    run.counts.total += 1;
    run.item_duration(done.elapsed_ms);
    let run_id = run.run_id;
    let base = |quota: &'static str| empty_record(c, target, run_id, quota);
    let progress = done.progress;
    if progress.not_client && done.error.is_none() {
        run.store.record_boleto(&BoletoRecord {
            outcome: BoletoOutcome::CpfNotFound,
            at: &at,
            ..base("")
        })?;
        run.counts.ok += 1;
        run.add("cpf_not_found", 1);
        tracing::warn!("{who}: cpf_not_found: the portal finds no quota for this CPF");
        return Ok(());
    }
    let quota_count = progress.count;
    let (mut saved, mut failed, mut already) = (0, 0, 0);
    let mut notes = Vec::new();
    for q in progress.quotas {
        match q {
            QuotaOutcome::AlreadyDone { .. } => already += 1,
            QuotaOutcome::NoBoleto { quota, detail } => {
                run.store.record_boleto(&BoletoRecord {
                    quota: &quota,
                    outcome: BoletoOutcome::NoBoleto,
                    error: Some(&detail),
                    at: &at,
                    ..base("")
                })?;
                notes.push(format!("{quota}: {detail}"));
            }
            QuotaOutcome::Failed { quota, error } => {
                failed += 1;
                run.store.record_boleto(&BoletoRecord {
                    quota: &quota,
                    error: Some(&error),
                    at: &at,
                    ..base("")
                })?;
                notes.push(format!("{quota}: error: {error}"));
            }
            QuotaOutcome::Saved { quota, row, pdf } => {
                let linha = row
                    .linha
                    .as_deref()
                    .and_then(|l| match boleto::validate_linha(l) {
                        Ok(v) => Some(v.digits),
                        Err(e) => {
                            notes.push(format!("{quota}: linha digitável not recorded: {e}"));
                            None
                        }
                    });
                match save(
                    run,
                    downloads,
                    target,
                    c,
                    &quota,
                    quota_count,
                    &row,
                    &pdf,
                    &at,
                ) {
                    Ok(path) => {
                        saved += 1;
                        run.add("files", 1);
                        let sha = hex::encode(Sha256::digest(&pdf));
                        let due = row.due.format("%Y-%m-%d").to_string();
                        run.store.record_boleto(&BoletoRecord {
                            quota: &quota,
                            outcome: BoletoOutcome::Success,
                            due_date: Some(&due),
                            value_centavos: row.value_centavos,
                            linha: linha.as_deref(),
                            pdf_path: Some(&path.display().to_string()),
                            pdf_sha256: Some(&sha),
                            at: &at,
                            ..base("")
                        })?;
                    }
                    Err(e) => {
                        failed += 1;
                        let error = format!("{e:#}");
                        run.store.record_boleto(&BoletoRecord {
                            quota: &quota,
                            error: Some(&error),
                            at: &at,
                            ..base("")
                        })?;
                        notes.push(format!("{quota}: error: {error}"));
                    }
                }
            }
        }
    }
    if let Some(error) = &done.error {
        // The client could not be finished; what it got so far is recorded above.
        failed += 1;
        run.store.record_boleto(&BoletoRecord {
            error: Some(error),
            at: &at,
            ..base("")
        })?;
        notes.push(format!("error: {error}"));
    }
    let outcome = if failed > 0 {
        BoletoOutcome::Error
    } else if saved > 0 || already > 0 {
        BoletoOutcome::Success
    } else {
        BoletoOutcome::NoBoleto
    };
    run.add(outcome.as_str(), 1);
    run.add("already_done", already);
    if outcome == BoletoOutcome::Error {
        run.counts.failed += 1;
    } else {
        run.counts.ok += 1;
    }
    let line = match (&done.error, notes.len()) {
        // A client that failed before any quota: the error alone.
        (Some(error), 1) => format!("{who}: error: {error}"),
        _ => format!(
            "{who}: {outcome}{}{}",
            if saved > 0 {
                format!(", {saved} file(s) saved")
            } else {
                String::new()
            },
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            }
        ),
    };
    if outcome == BoletoOutcome::Error {
        tracing::warn!("{line}");
        run.event("warn", line);
    } else if printer.item_lines() {
        tracing::info!("{line} [{}ms]", done.elapsed_ms);
    }
    Ok(())
}

/// Writes a client's boleto under its name, never over another client's file. A file of the
/// same client and month from another year is put aside in a folder named after its year.
#[allow(
    clippy::too_many_arguments,
    reason = "the boleto, its client and the parts of its file name"
)]
fn save(
    run: &mut JobRun,
    downloads: &Path,
    target: &Target,
    c: &ClientWork,
    quota: &str,
    quota_count: usize,
    row: &BoletoRow,
    pdf: &[u8],
    at: &str,
) -> Result<PathBuf> {
    let path = file_path(run, downloads, target, c, quota, quota_count, row)?;
    // Claim the name before writing, so that a run killed in between finds the file as this
    // client's own and never files it under a homonym's name.
    run.store.claim_boleto_path(&BoletoRecord {
        pdf_path: Some(&path.display().to_string()),
        error: Some("the process stopped while saving this file"),
        at,
        ..empty_record(c, target, run.run_id, quota)
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| downloads.join(&c.folder));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    files::write_atomic(&dir, &name, pdf)
}

/// Where a client's boleto goes: its own earlier file for the month, else `{NOME}_{MES}.pdf`
/// (with the quota when the client has several), else the homonym form when the name is taken.
fn file_path(
    run: &mut JobRun,
    downloads: &Path,
    target: &Target,
    c: &ClientWork,
    quota: &str,
    quota_count: usize,
    row: &BoletoRow,
) -> Result<PathBuf> {
    let dir = downloads.join(&c.folder);
    if let Some((own, _)) = run
        .store
        .boleto_file(c.id, target.year, target.month, quota)?
    {
        // A re-download for the same client and month replaces its own file.
        return Ok(PathBuf::from(own));
    }
    let mut stem = boleto_files::file_stem(&c.name, row.due.month());
    if quota_count > 1 {
        stem = format!("{stem}_{}", files::safe_component(&quota.replace('/', "-")));
    }
    let cpf = Cpf::parse(&c.cpf).map_err(|e| anyhow!("invalid CPF in the store: {e}"))?;
    // The plain name first, then the homonym form, then numbered ones: the first name that no
    // other client owns and no unknown file occupies.
    let homonym = boleto_files::homonym_stem(&stem, &cpf);
    let candidates = std::iter::once(stem.clone())
        .chain(std::iter::once(homonym.clone()))
        .chain((2..).map(|n| format!("{homonym}_{n}")));
    for candidate in candidates.take(100) {
        let path = dir.join(format!("{candidate}.pdf"));
        match run.store.file_owner(&path.display().to_string())? {
            Some(owner) if owner.client_id == c.id => {
                if owner.year != target.year {
                    // The same client's file of another year: put it aside, never over it.
                    let aside = dir.join(owner.year.to_string());
                    files::create_private_dir(&aside)?;
                    let moved = aside.join(path.file_name().unwrap_or_default());
                    if path.exists() {
                        std::fs::rename(&path, &moved).with_context(|| {
                            format!(
                                "cannot move `{}` aside to `{}`",
                                path.display(),
                                moved.display()
                            )
                        })?;
                    }
                    run.store
                        .move_boleto_file(owner.boleto_id, &moved.display().to_string())?;
                }
                return Ok(path);
            }
            Some(_) => continue,
            None if path.exists() => continue,
            None => return Ok(path),
        }
    }
    Err(anyhow!(
        "no free file name for `{}` in `{}` (100 homonyms?)",
        stem,
        dir.display()
    ))
}

/// A record of `quota` (or of the client, with `""`) for the month, outcome `error` and nothing
/// else filled in: callers set what they know.
fn empty_record<'a>(
    c: &ClientWork,
    target: &Target,
    run_id: i64,
    quota: &'a str,
) -> BoletoRecord<'a> {
    BoletoRecord {
        client_id: c.id,
        year: target.year,
        month: target.month,
        quota,
        outcome: BoletoOutcome::Error,
        due_date: None,
        value_centavos: None,
        linha: None,
        pdf_path: None,
        pdf_sha256: None,
        error: None,
        run_id,
        at: "",
    }
}
