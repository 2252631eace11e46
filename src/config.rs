//! Configuration: resolved once, defaults < file < environment < flags, then validated.
//!
//! The file is TOML (`--config`, else `CRM_JOBS_CONFIG`, else `~/.config/crm-jobs/config.toml`,
//! else `/etc/crm-jobs/config.toml`, else defaults only). Any key can be overridden by an
//! environment variable `CRM_JOBS_<SECTION>_<KEY>` (e.g. `CRM_JOBS_NIO_BASE_URL`). Unknown keys,
//! in the file or in such variables, are errors that name them. Secrets never live in the file:
//! they come from the environment or from a `*_file` path. Relative paths in the file are taken
//! from the file's folder, never from the working directory cron happens to use.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::exit::CodedError;

/// Environment variables with a meaning of their own, not `[section] key` overrides.
const RESERVED_ENV: &[&str] = &[
    "CRM_JOBS_CONFIG",
    "CRM_JOBS_NOW",
    "CRM_JOBS_NIO_PASSPHRASE",
    "CRM_JOBS_FERNET_KEY",
    "CRM_JOBS_FERNET_KEY_FILE",
    "CRM_JOBS_CRM_ACCESS_TOKEN",
    "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN",
    "CRM_JOBS_CRM_ACCESS_TOKEN_FILE",
    "CRM_JOBS_CRM_SECRET_ACCESS_TOKEN_FILE",
    "CRM_JOBS_STRIPE_SECRET_KEY",
    "CRM_JOBS_STRIPE_SECRET_KEY_FILE",
    "CRM_JOBS_SMTP_PASSWORD",
    "CRM_JOBS_SMTP_PASSWORD_FILE",
    "CRM_JOBS_LOG",
    // The crash suite's hook; honoured by debug builds only (see `store::crash_point`).
    "CRM_JOBS_TEST_ABORT_AT_COMMIT",
];

/// Sections that environment variables may address, longest first so that `nio.fields`
/// wins over `nio`.
const SECTIONS: &[&str] = &[
    "nio.fields",
    "crm.references",
    "crm.resources",
    "crm.natural_keys",
    "sync.priorities",
    "cleanup",
    "credentials",
    "downloads",
    "canopus",
    "store",
    "fetch",
    "retry",
    "nio",
    "crm",
    "sync",
    "stripe",
    "smtp",
    "renew",
    "metrics",
    "tls",
    "pings",
    "alerts.stale_hours",
    "alerts",
];

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub downloads: DownloadsConfig,
    pub nio: NioConfig,
    pub fetch: FetchConfig,
    pub retry: RetryConfig,
    pub canopus: CanopusConfig,
    pub credentials: CredentialsConfig,
    pub crm: CrmConfig,
    pub sync: SyncConfig,
    pub cleanup: CleanupConfig,
    pub stripe: StripeConfig,
    pub smtp: SmtpConfig,
    pub renew: RenewConfig,
    pub metrics: MetricsConfig,
    pub tls: TlsConfig,
    /// `[pings]`: a Healthchecks.io-style URL per job (`fetch-invoices = "https://hc-ping.com/..."`).
    pub pings: std::collections::BTreeMap<String, String>,
    /// `[schedule.<name>]`: when each job runs (changes the built-in schedule, see
    /// `crate::timers`).
    pub schedule: std::collections::BTreeMap<String, ScheduleEntry>,
    pub alerts: AlertsConfig,
}

/// `[alerts]`: one email per incident (and one when it clears), through the email outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Who gets the alerts; unset: no alert.
    pub to: Option<String>,
    /// Failed runs in a row that open an incident.
    pub consecutive_failures: u32,
    /// A run whose failed items exceed this share (of at least 5 items) opens an incident.
    pub error_rate_percent: u32,
    /// A run longer than this opens an incident.
    pub max_run_minutes: u32,
    /// Per job: hours without a successful run that open an incident (instead of the
    /// schedule's rule).
    pub stale_hours: std::collections::BTreeMap<String, u32>,
    /// Scheduled starts a job may miss (no success since) before an incident opens.
    pub missed_starts: u32,
    /// Minutes a scheduled start is given to succeed before it counts as missed.
    pub grace_minutes: u32,
    /// A run that did nothing while work was waiting opens an incident.
    pub idle_with_work: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            to: None,
            consecutive_failures: 3,
            error_rate_percent: 50,
            max_run_minutes: 60,
            stale_hours: std::collections::BTreeMap::new(),
            missed_starts: 2,
            grace_minutes: 30,
            idle_with_work: true,
        }
    }
}

/// `[schedule.<name>]`: one scheduled command. Unset fields keep the built-in entry's value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    /// crontab(5) expression, e.g. `0 8,14,20 * * *`.
    pub cron: Option<String>,
    /// IANA zone the expression is read in (default America/Sao_Paulo).
    pub timezone: Option<String>,
    /// The crm-jobs subcommand and its flags, e.g. `fetch-invoices --limit 20`.
    pub command: Option<String>,
    /// A command run right after (e.g. `renew --step emails`).
    pub then: Option<String>,
    /// One line saying what the entry does (crontab comment, unit Description=).
    pub description: Option<String>,
    /// systemd `RandomizedDelaySec=` (`0`: none). Default `2min`.
    pub randomized_delay: Option<String>,
    /// Run with `--quiet` under cron (mail only warnings and errors).
    pub quiet: Option<bool>,
    /// `false` drops the entry.
    pub enabled: Option<bool>,
}

/// `[tls]`: what the HTTPS clients (Nio, Canopus, CRM, Stripe, pings) trust besides the
/// system's certificate authorities.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of extra CA certificates (a company proxy's CA, a test CA).
    pub ca_file: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus textfile written after every run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// node_exporter's textfile folder; unset: no file.
    pub textfile_dir: Option<PathBuf>,
}

/// `[store]`: where the SQLite file lives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Path of the SQLite file (default `~/.local/share/crm-jobs/crm-jobs.db`).
    pub path: Option<PathBuf>,
}

/// `[downloads]`: where files (invoice PDFs, boletos) are written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadsConfig {
    /// Root folder (default: `downloads` beside the store).
    pub dir: Option<PathBuf>,
}

/// `[nio]`: the Nio Negocia API (docs/src/reference/services.md#nio-negocia-api).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NioConfig {
    /// Site root, e.g. `https://negociacao.niointernet.com.br`. No default.
    pub base_url: Option<String>,
    /// Bootstrap path answering the encrypted params.
    pub params_path: String,
    /// Session path under the API server.
    pub session_path: String,
    /// Debts path under the API server; `{cpf}` is replaced by the 11 digits.
    pub debts_path: String,
    /// Value of the `origin` query parameter.
    pub origin: String,
    /// Invoices asked per page (`limit`, summed over the debts of an answer); the next page is
    /// asked while an answer holds this many invoices.
    pub page_size: u32,
    /// Header carrying the raw token.
    pub token_header: String,
    /// Header carrying the session id.
    pub session_header: String,
    /// PDF URL template (`{api}`, `{base}`, `{debtId}`, `{invoiceId}`, `{cpf}`); unset: no PDFs.
    pub pdf_url_template: Option<String>,
    /// File holding the passphrase (else `CRM_JOBS_NIO_PASSPHRASE`).
    pub passphrase_file: Option<PathBuf>,
    /// How long bootstrap params and the session are reused, across runs too.
    pub bootstrap_ttl_minutes: u32,
    /// TCP connect timeout.
    pub connect_timeout_secs: u64,
    /// Whole-request timeout.
    pub timeout_secs: u64,
    /// Customers queried at once.
    pub concurrency: u32,
    /// Extra tries of one request on a transient failure (429, 5xx, timeout, reset).
    pub request_retries: u32,
    /// First backoff between tries, doubled each time (a `Retry-After` wins).
    pub retry_backoff_ms: u64,
    /// Longest `Retry-After` honoured; a longer one fails the request as transient.
    pub max_retry_after_secs: u64,
    /// Field names of the JSON answers.
    pub fields: NioFields,
}

impl Default for NioConfig {
    fn default() -> Self {
        NioConfig {
            base_url: None,
            params_path: "/negociar/params".into(),
            session_path: "/authentication/sessionId".into(),
            debts_path: "/debts/customers/{cpf}".into(),
            origin: "nio".into(),
            page_size: 50,
            token_header: "Authorization".into(),
            session_header: "Session-Id".into(),
            pdf_url_template: None,
            passphrase_file: None,
            bootstrap_ttl_minutes: 30,
            connect_timeout_secs: 10,
            timeout_secs: 30,
            concurrency: 8,
            request_retries: 2,
            retry_backoff_ms: 500,
            max_retry_after_secs: 120,
            fields: NioFields::default(),
        }
    }
}

/// `[nio.fields]`: JSON field names, so that a differently dressed API is reached by
/// configuration alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NioFields {
    pub params_token: String,
    pub params_api_url: String,
    pub session_token: String,
    pub debts: String,
    pub debt_id: String,
    pub invoices: String,
    pub invoice_id: String,
    pub amount: String,
    pub due_date: String,
    pub reference_month: String,
    pub status: String,
    pub barcode: String,
    /// Tried in order; the first non-empty one is the PIX code.
    pub pix_code: Vec<String>,
    /// Field of a JSON PDF answer holding the file's URL.
    pub pdf_url: String,
}

impl Default for NioFields {
    fn default() -> Self {
        NioFields {
            params_token: "token".into(),
            params_api_url: "apiServerUrl".into(),
            session_token: "token".into(),
            debts: "debts".into(),
            debt_id: "debtId".into(),
            invoices: "invoices".into(),
            invoice_id: "id".into(),
            amount: "amount".into(),
            due_date: "dueDate".into(),
            reference_month: "referenceMonth".into(),
            status: "status".into(),
            barcode: "barCode".into(),
            pix_code: vec!["originalPixCode".into(), "pixCode".into()],
            pdf_url: "url".into(),
        }
    }
}

/// `[credentials]`: how stored portal passwords are sealed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// File holding the Fernet key (else `CRM_JOBS_FERNET_KEY`).
    pub fernet_key_file: Option<PathBuf>,
}

/// `[canopus]`: the Canopus portal (docs/src/reference/services.md#canopus-portal). Control names
/// and paths are the real ones by default, so that a changed portal is reached by configuration
/// alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanopusConfig {
    /// Portal root, e.g. `https://cnp3.consorciocanopus.com.br`. No default.
    pub base_url: Option<String>,
    pub login_path: String,
    pub search_path: String,
    pub boletos_path: String,
    pub user_field: String,
    pub password_field: String,
    pub login_button: String,
    /// User codes are left-padded with zeros to this many digits.
    pub user_code_digits: usize,
    /// Id fragment of the element holding the login error message.
    pub login_message_id: String,
    pub criterion_field: String,
    /// Value of the criterion that searches by CPF.
    pub criterion_cpf: String,
    pub search_field: String,
    pub search_button: String,
    /// Id fragment of the result grid and of its quota links.
    pub results_grid: String,
    pub quota_link: String,
    /// Text of the search answer for a CPF that is not a client.
    pub not_found_text: String,
    /// Text of the search page when a posted grid link was not a quota (the session stays on
    /// the client it was on).
    pub not_selected_text: String,
    /// Id fragment of the client page's element that shows the CPF; empty: anywhere in the
    /// page's text.
    pub client_cpf_id: String,
    /// Id fragment of the boleto grid and name fragment of each row's emit image button.
    pub boletos_grid: String,
    pub emit_image: String,
    /// Text of the boleto page when the quota has no open installment.
    pub no_boleto_text: String,
    pub emit_button: String,
    pub date_field: String,
    pub kind_field: String,
    pub kind_value: String,
    /// Which quotas of a CPF to take: `each`, `first` or `last`.
    pub quotas: QuotaChoice,
    /// Which installment to take: `month` (the one due in the month asked) or `last` (the
    /// grid's last row, as today's users do).
    pub row: RowChoice,
    pub timeout_secs: u64,
    /// Portal sessions used at once per sales point (each logs in once).
    pub concurrency: u32,
    /// Extra tries of one portal request (logins included) after a transient failure.
    pub retries: u32,
    /// The first wait before such a try, in milliseconds; each next one doubles.
    pub backoff_ms: u64,
}

impl Default for CanopusConfig {
    fn default() -> Self {
        CanopusConfig {
            base_url: None,
            login_path: "/WWW/frmCorCCCnsLogin.aspx".into(),
            search_path: "/WWW/CONAT/frmBuscaCota.aspx".into(),
            boletos_path: "/WWW/CONCO/frmConCoRelBoletoAvulso.aspx".into(),
            user_field: "edtUsuario".into(),
            password_field: "edtSenha".into(),
            login_button: "btnLogin".into(),
            user_code_digits: 10,
            login_message_id: "lblMensagem".into(),
            criterion_field: "ctl00$Conteudo$cbxCriterioBusca".into(),
            criterion_cpf: "F".into(),
            search_field: "ctl00$Conteudo$edtContextoBusca".into(),
            search_button: "ctl00$Conteudo$btnBuscar".into(),
            results_grid: "grdBuscaAvancada".into(),
            quota_link: "lnkGrupoCota".into(),
            not_found_text: "Nenhum registro encontrado".into(),
            not_selected_text: "Selecione um registro válido".into(),
            client_cpf_id: String::new(),
            boletos_grid: "grdBoleto_Avulso".into(),
            emit_image: "imgEmite_Boleto".into(),
            no_boleto_text: "Não existem parcelas em aberto".into(),
            emit_button: "ctl00$Conteudo$btnEmitir".into(),
            date_field: "ctl00$Conteudo$edtDT_Compensacao".into(),
            kind_field: "ctl00$Conteudo$rdlTipoEmissao".into(),
            kind_value: "BA".into(),
            quotas: QuotaChoice::Each,
            row: RowChoice::Month,
            timeout_secs: 60,
            concurrency: 4,
            retries: 3,
            backoff_ms: 500,
        }
    }
}

/// `[crm]`: the external CRM's REST API (docs/src/reference/services.md#the-crm).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrmConfig {
    /// API root, e.g. `https://api.beteltecnologia.com`. No default.
    pub base_url: Option<String>,
    /// Header names of the two credentials (values from `CRM_JOBS_CRM_ACCESS_TOKEN` and
    /// `CRM_JOBS_CRM_SECRET_ACCESS_TOKEN`, or the `*_file` keys).
    pub access_token_header: String,
    pub secret_token_header: String,
    pub access_token_file: Option<PathBuf>,
    pub secret_token_file: Option<PathBuf>,
    /// JSON pointer of the new record's id in a create's answer.
    pub id_pointer: String,
    /// JSON pointer of the error message in a 4xx answer.
    pub message_pointer: String,
    /// Requests per minute, for every process of the tool together (0: no limit).
    pub rate_limit_per_minute: u32,
    pub timeout_secs: u64,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Path of each entity's resource.
    pub resources: std::collections::BTreeMap<String, String>,
    /// References to translate per entity: `"/json/pointer=entity"`, `*` for every element of a
    /// list (e.g. `"/produtos/*/produto/id=produtos"`). Merged with the defaults entity by
    /// entity.
    #[serde(deserialize_with = "references_over_defaults")]
    pub references: std::collections::BTreeMap<String, Vec<String>>,
    /// Natural key per entity, to find a record at the CRM when a create's outcome is unknown:
    /// `"/json/pointer=filter"` (the payload's value there, asked with that list filter).
    /// Merged with the defaults entity by entity.
    #[serde(deserialize_with = "natural_keys_over_defaults")]
    pub natural_keys: std::collections::BTreeMap<String, String>,
    /// JSON pointer of the records in a list answer.
    pub list_pointer: String,
    /// JSON pointer of a record's id within one record of a list answer.
    pub list_id_pointer: String,
}

/// An entity written in the config replaces that entity's default entry; the other defaults
/// stay (a table written in full would otherwise silently drop them).
fn over_defaults<V>(
    mut defaults: std::collections::BTreeMap<String, V>,
    given: std::collections::BTreeMap<String, V>,
) -> std::collections::BTreeMap<String, V> {
    defaults.extend(given);
    defaults
}

fn references_over_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, D::Error> {
    Ok(over_defaults(
        CrmConfig::default().references,
        Deserialize::deserialize(d)?,
    ))
}

fn natural_keys_over_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    Ok(over_defaults(
        CrmConfig::default().natural_keys,
        Deserialize::deserialize(d)?,
    ))
}

fn priorities_over_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, i64>, D::Error> {
    Ok(over_defaults(
        SyncConfig::default().priorities,
        Deserialize::deserialize(d)?,
    ))
}

impl Default for CrmConfig {
    fn default() -> Self {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        CrmConfig {
            base_url: None,
            access_token_header: "access-token".into(),
            secret_token_header: "secret-access-token".into(),
            access_token_file: None,
            secret_token_file: None,
            id_pointer: "/data/id".into(),
            message_pointer: "/data/mensagem".into(),
            rate_limit_per_minute: 100,
            timeout_secs: 30,
            concurrency: 4,
            resources: map(&[
                ("clientes", "/clientes"),
                ("produtos", "/produtos"),
                ("vendas", "/vendas"),
                ("atividades", "/orcamentos"),
            ]),
            // A venda and an atividade (orçamento) name their client and products alike.
            references: ["vendas", "atividades"]
                .into_iter()
                .map(|e| {
                    (
                        e.to_string(),
                        vec![
                            "/cliente_id=clientes".to_string(),
                            "/produtos/*/produto/id=produtos".to_string(),
                        ],
                    )
                })
                .collect(),
            natural_keys: map(&[
                ("clientes", "/cpf_cnpj=cpf_cnpj"),
                ("produtos", "/codigo_barras=codigo_barras"),
            ]),
            list_pointer: "/data".into(),
            list_id_pointer: "/id".into(),
        }
    }
}

/// `[sync]`: the outbox drain (`sync-queue`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Items per run (`--batch`).
    pub batch: u32,
    /// Transient failures after which an item is `failed` (`--max-attempts`).
    pub max_attempts: u32,
    /// First backoff after a transient failure, doubled at each attempt.
    pub backoff_secs: u64,
    /// How long an item waits for a reference that is not synced yet, unless it is synced
    /// sooner in the same run.
    pub defer_secs: u64,
    /// Longest `Retry-After` honoured by waiting, and the longest pause kept in the store; a
    /// longer one ends the run's sending (items untouched).
    pub max_retry_after_secs: u64,
    /// Priority by entity (higher first). Merged with the defaults entity by entity.
    #[serde(deserialize_with = "priorities_over_defaults")]
    pub priorities: std::collections::BTreeMap<String, i64>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch: 100,
            max_attempts: 3,
            backoff_secs: 2,
            defer_secs: 60,
            max_retry_after_secs: 120,
            priorities: [
                ("vendas", 5),
                ("clientes", 3),
                ("produtos", 3),
                ("atividades", 2),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }
}

/// `[cleanup]`: retention of old rows, in days, and the batch size of deletions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    pub sync_log_days: u32,
    pub queue_done_days: u32,
    pub queue_failed_days: u32,
    pub runs_days: u32,
    /// Sent (or failed) emails of the outbox.
    pub email_outbox_days: u32,
    /// Sessions expired longer ago than this are soft-deleted.
    pub sessions_days: u32,
    /// Payments pending longer than this are cancelled.
    pub pending_payments_days: u32,
    /// Portal pages saved to diagnose a failed step (`diagnostics/` beside the store).
    pub diagnostics_days: u32,
    /// Rows deleted per transaction (the write lock is held that long only).
    pub batch_size: u32,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            sync_log_days: 30,
            queue_done_days: 7,
            queue_failed_days: 30,
            runs_days: 180,
            email_outbox_days: 90,
            sessions_days: 30,
            pending_payments_days: 7,
            diagnostics_days: 14,
            batch_size: 1000,
        }
    }
}

/// `[stripe]`: Stripe's API (docs/src/reference/services.md#stripe).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    /// API root, e.g. `https://api.stripe.com`. No default.
    pub base_url: Option<String>,
    /// The pinned `Stripe-Version` header.
    pub api_version: String,
    /// File holding the secret key (else `CRM_JOBS_STRIPE_SECRET_KEY`).
    pub secret_key_file: Option<PathBuf>,
    pub timeout_secs: u64,
    /// Subscriptions asked at once.
    pub concurrency: u32,
    /// Extra tries of one request on 429 (as `Retry-After` says) or 5xx.
    pub retries: u32,
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            base_url: None,
            api_version: "2025-03-31.basil".into(),
            secret_key_file: None,
            timeout_secs: 30,
            concurrency: 8,
            retries: 2,
        }
    }
}

/// `[smtp]`: how `renew` sends its emails (docs/src/reference/services.md#smtp).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `smtp` sends; `eml` writes each message as a `.eml` file into `eml_dir` (development).
    pub mode: SmtpMode,
    pub host: Option<String>,
    pub port: u16,
    /// `none`, `starttls` or `tls` (implicit TLS, usually port 465).
    pub tls: SmtpTls,
    /// User for AUTH (the password from `CRM_JOBS_SMTP_PASSWORD` or `password_file`); unset:
    /// no AUTH.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust, e.g. a test server's; set, only it is trusted.
    pub ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry (default: `host`).
    pub tls_server_name: Option<String>,
    /// The sender, e.g. `Equipe <nao-responda@example.com>`.
    pub from: String,
    pub eml_dir: Option<PathBuf>,
    pub timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            mode: SmtpMode::Smtp,
            host: None,
            port: 587,
            tls: SmtpTls::Starttls,
            user: None,
            password_file: None,
            ca_file: None,
            tls_server_name: None,
            from: "crm-jobs <nao-responda@localhost>".into(),
            eml_dir: None,
            timeout_secs: 30,
        }
    }
}

/// `[renew]`: the subscription steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewConfig {
    /// Warn subscriptions whose period ends within this many days (`--days`).
    pub days: u32,
    /// The product's name in the emails.
    pub app_name: String,
    /// Domain of the Message-IDs.
    pub message_id_domain: String,
    /// Emails sent per run at most.
    pub email_batch: u32,
    /// A Stripe subscription whose period ended less than this many days ago is not expired:
    /// Stripe renews at the period's end, and the `stripe` step (which also looks back this far)
    /// gets the new period first.
    pub stripe_grace_days: u32,
}

impl Default for RenewConfig {
    fn default() -> Self {
        RenewConfig {
            days: 3,
            app_name: "Painel".into(),
            message_id_domain: "crm-jobs.localhost".into(),
            email_batch: 500,
            stripe_grace_days: 2,
        }
    }
}

/// `[fetch]`: defaults of `fetch-invoices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Contracts per run (`--limit`).
    pub limit: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig { limit: 20 }
    }
}

/// `[retry]`: defaults of `retry` and of the retry pass of `fetch-invoices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Failed attempts after which an invoice is `gave_up`.
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_attempts: 3 }
    }
}

/// The configuration with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file read, if any, and why it was chosen.
    pub file: Option<(PathBuf, &'static str)>,
    /// Environment variables that overrode keys.
    pub env_overrides: Vec<String>,
}

impl Loaded {
    /// The store path: `--db`, else `[store] path`, else the default.
    pub fn store_path(&self, db_flag: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = db_flag {
            return absolute(p);
        }
        match &self.config.store.path {
            Some(p) => Ok(p.clone()),
            None => Ok(data_home()?.join("crm-jobs").join("crm-jobs.db")),
        }
    }

    /// The downloads root: `[downloads] dir`, else `downloads` beside the store.
    pub fn downloads_dir(&self, store_path: &Path) -> PathBuf {
        match &self.config.downloads.dir {
            Some(d) => d.clone(),
            None => store_path
                .parent()
                .unwrap_or(Path::new("/"))
                .join("downloads"),
        }
    }
}

/// `[canopus] quotas`: which quotas of a CPF to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaChoice {
    Each,
    First,
    Last,
}

/// `[canopus] row`: which installment of a quota to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowChoice {
    /// The one due in the month asked.
    Month,
    /// The grid's last row.
    Last,
}

/// `[smtp] mode`: send, or write `.eml` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpMode {
    Smtp,
    Eml,
}

/// `[smtp] tls`: plain, STARTTLS, or implicit TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

impl SmtpTls {
    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::Starttls => "starttls",
            SmtpTls::Tls => "tls",
        }
    }
}

/// Deserializes `table` as a `Config`, an error naming the key it is about (`[canopus]
/// quotas`: unknown variant `eachh`, expected one of `each`, `first`, `last`).
fn config_from(table: toml::Table) -> std::result::Result<Config, String> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().message().to_string();
        match path.rsplit_once('.') {
            Some((section, key)) if !section.is_empty() => {
                format!("`[{section}] {key}`: {message}")
            }
            // A top-level key is a section.
            _ if path != "." && !path.is_empty() => format!(
                "`[{path}]`: {}",
                message.replacen("unknown field", "unknown section", 1)
            ),
            _ => message,
        }
    })
}

/// Loads and validates the configuration.
pub fn load(flag: Option<&Path>) -> Result<Loaded> {
    let file = locate(flag)?;
    let mut table = toml::Table::new();
    if let Some((path, _)) = &file {
        // A config file is a few kB; 1 MB is a wrong path (`--config /dev/zero`).
        let text = crate::files::read_text_limited(path, 1024 * 1024).map_err(|e| {
            CodedError::config(format!("cannot read config file `{}`: {e}", path.display()))
        })?;
        table = toml::from_str::<toml::Table>(&text).map_err(|e| {
            CodedError::config(format!("invalid config file `{}`: {e}", path.display()))
        })?;
        // Validate the file alone first, so that an error names the file.
        let mut parsed: Config = config_from(table.clone()).map_err(|e| {
            CodedError::config(format!("invalid config file `{}`: {e}", path.display()))
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        resolve_paths(&mut parsed, base);
        table = toml::Table::try_from(&parsed).context("re-encoding the config")?;
    }
    let (env_table, env_overrides) = env_overrides()?;
    for (section, values) in env_table {
        let target = section_table(&mut table, &section);
        for (k, v) in values {
            target.insert(k, v);
        }
    }
    let mut config: Config = config_from(table)
        .map_err(|e| CodedError::config(format!("invalid configuration: {e}")))?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    resolve_paths(&mut config, &cwd);
    // Job names have `-`, environment variables cannot: `CRM_JOBS_PINGS_FETCH_INVOICES` names
    // `[pings] fetch-invoices` (and likewise `[alerts.stale_hours]`).
    config.pings = std::mem::take(&mut config.pings)
        .into_iter()
        .map(|(k, v)| (k.replace('_', "-"), v))
        .collect();
    config.alerts.stale_hours = std::mem::take(&mut config.alerts.stale_hours)
        .into_iter()
        .map(|(k, v)| (k.replace('_', "-"), v))
        .collect();
    validate(&config)?;
    Ok(Loaded {
        config,
        file,
        env_overrides,
    })
}

fn locate(flag: Option<&Path>) -> Result<Option<(PathBuf, &'static str)>> {
    if let Some(p) = flag {
        if !p.exists() {
            return Err(CodedError::config(format!(
                "config file `{}` (given with --config) does not exist",
                p.display()
            )));
        }
        return Ok(Some((absolute(p)?, "--config")));
    }
    if let Ok(p) = std::env::var("CRM_JOBS_CONFIG")
        && !p.is_empty()
    {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(CodedError::config(format!(
                "config file `{}` (from CRM_JOBS_CONFIG) does not exist",
                p.display()
            )));
        }
        return Ok(Some((absolute(&p)?, "CRM_JOBS_CONFIG")));
    }
    let user = config_home().map(|h| h.join("crm-jobs").join("config.toml"));
    if let Ok(p) = user
        && p.exists()
    {
        return Ok(Some((p, "user config")));
    }
    let system = PathBuf::from("/etc/crm-jobs/config.toml");
    if system.exists() {
        return Ok(Some((system, "system config")));
    }
    Ok(None)
}

type EnvTable = Vec<(String, Vec<(String, toml::Value)>)>;

/// Reads `CRM_JOBS_<SECTION>_<KEY>` variables into per-section tables, validating each.
fn env_overrides() -> Result<(EnvTable, Vec<String>)> {
    // `vars_os`: a variable that is not UTF-8 (`FOO=$'\xff'`) is none of ours and must not
    // stop anything; one of ours that is not UTF-8 is an error naming it.
    let mut vars: Vec<(String, String)> = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str().filter(|k| k.starts_with("CRM_JOBS_")) else {
            continue;
        };
        if RESERVED_ENV.contains(&k) {
            continue;
        }
        let Some(v) = v.to_str() else {
            return Err(CodedError::config(format!(
                "environment variable `{k}` is not UTF-8 text: set it again in UTF-8"
            )));
        };
        vars.push((k.to_string(), v.to_string()));
    }
    vars.sort();
    let mut out: EnvTable = Vec::new();
    let mut names = Vec::new();
    for (name, raw) in vars {
        let rest = name["CRM_JOBS_".len()..].to_ascii_lowercase();
        let Some(section) = SECTIONS
            .iter()
            .find(|s| rest.starts_with(&format!("{}_", s.replace('.', "_"))))
        else {
            return Err(CodedError::config(format!(
                "unknown environment variable `{name}`: it names no config section (sections: {})",
                SECTIONS.join(", ")
            )));
        };
        let key = rest[section.len() + 1..].to_string();
        let value = parse_env_value(&raw);
        // Check the key exists in that section by deserializing it alone.
        let mut probe = toml::Table::new();
        section_table(&mut probe, section).insert(key.clone(), value.clone());
        if let Err(e) = config_from(probe) {
            return Err(CodedError::config(format!(
                "invalid environment variable `{name}`: {e}"
            )));
        }
        match out.iter_mut().find(|(s, _)| s == section) {
            Some((_, values)) => values.push((key, value)),
            None => out.push((section.to_string(), vec![(key, value)])),
        }
        names.push(name);
    }
    Ok((out, names))
}

/// A value from the environment: a TOML literal when it parses as one (numbers, booleans,
/// arrays), else a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn section_table<'a>(table: &'a mut toml::Table, dotted: &str) -> &'a mut toml::Table {
    let mut current = table;
    for part in dotted.split('.') {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current
}

fn resolve_paths(config: &mut Config, base: &Path) {
    let fix = |p: &mut Option<PathBuf>| {
        if let Some(path) = p
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    };
    fix(&mut config.store.path);
    fix(&mut config.downloads.dir);
    fix(&mut config.nio.passphrase_file);
    fix(&mut config.credentials.fernet_key_file);
    fix(&mut config.crm.access_token_file);
    fix(&mut config.crm.secret_token_file);
    fix(&mut config.stripe.secret_key_file);
    fix(&mut config.smtp.password_file);
    fix(&mut config.tls.ca_file);
    fix(&mut config.smtp.ca_file);
    fix(&mut config.smtp.eml_dir);
    fix(&mut config.metrics.textfile_dir);
}

fn validate(config: &Config) -> Result<()> {
    let nio = &config.nio;
    if let Some(url) = &nio.base_url {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(CodedError::config(format!(
                    "`[nio] base_url` = `{url}` is not an http(s) URL"
                )));
            }
        }
    }
    if !(1..=64).contains(&nio.concurrency) {
        return Err(CodedError::config(format!(
            "`[nio] concurrency` = {} is out of range (1 to 64)",
            nio.concurrency
        )));
    }
    if !(1..=500).contains(&nio.page_size) {
        return Err(CodedError::config(format!(
            "`[nio] page_size` = {} is out of range (1 to 500)",
            nio.page_size
        )));
    }
    if nio.timeout_secs == 0 || nio.connect_timeout_secs == 0 {
        return Err(CodedError::config(
            "`[nio] timeout_secs` and `connect_timeout_secs` must be at least 1",
        ));
    }
    if !nio.debts_path.contains("{cpf}") {
        return Err(CodedError::config(format!(
            "`[nio] debts_path` = `{}` has no `{{cpf}}` placeholder",
            nio.debts_path
        )));
    }
    let canopus = &config.canopus;
    if let Some(url) = &canopus.base_url
        && !reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http" || u.scheme() == "https")
    {
        return Err(CodedError::config(format!(
            "`[canopus] base_url` = `{url}` is not an http(s) URL"
        )));
    }
    let crm = &config.crm;
    if let Some(url) = &crm.base_url
        && !reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http" || u.scheme() == "https")
    {
        return Err(CodedError::config(format!(
            "`[crm] base_url` = `{url}` is not an http(s) URL"
        )));
    }
    if !(1..=64).contains(&crm.concurrency) || crm.timeout_secs == 0 {
        return Err(CodedError::config(
            "`[crm] concurrency` must be 1 to 64 and `[crm] timeout_secs` at least 1",
        ));
    }
    for (entity, refs) in &crm.references {
        for r in refs {
            match r.split_once('=') {
                Some((pointer, target))
                    if pointer.starts_with('/') && crm.resources.contains_key(target) => {}
                _ => {
                    return Err(CodedError::config(format!(
                        "`[crm.references] {entity}` has `{r}`: expected `/json/pointer=entity` with an entity of `[crm.resources]`"
                    )));
                }
            }
        }
    }
    for (entity, key) in &crm.natural_keys {
        match key.split_once('=') {
            Some((pointer, filter))
                if pointer.starts_with('/')
                    && !filter.is_empty()
                    && crm.resources.contains_key(entity) => {}
            _ => {
                return Err(CodedError::config(format!(
                    "`[crm.natural_keys] {entity}` = `{key}`: expected `/json/pointer=filter` for an entity of `[crm.resources]`"
                )));
            }
        }
    }
    if config.sync.max_attempts == 0 || config.sync.batch == 0 || config.cleanup.batch_size == 0 {
        return Err(CodedError::config(
            "`[sync] max_attempts`, `[sync] batch` and `[cleanup] batch_size` must be at least 1",
        ));
    }
    let smtp = &config.smtp;
    if smtp.from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(CodedError::config(format!(
            "`[smtp] from` = `{}` is not an address (e.g. `Equipe <nao-responda@example.com>`)",
            smtp.from
        )));
    }
    if config.stripe.concurrency == 0 || config.stripe.timeout_secs == 0 || smtp.timeout_secs == 0 {
        return Err(CodedError::config(
            "`[stripe] concurrency`, `[stripe] timeout_secs` and `[smtp] timeout_secs` must be at least 1",
        ));
    }
    if let Some(to) = &config.alerts.to
        && to.parse::<lettre::message::Mailbox>().is_err()
    {
        return Err(CodedError::config(format!(
            "`[alerts] to` = `{to}` is not an email address"
        )));
    }
    for (job, url) in &config.pings {
        if job.parse::<crate::job::Job>().is_err() {
            return Err(CodedError::config(format!(
                "`[pings] {job}`: `{job}` is not a job ({})",
                crate::job::Job::names()
            )));
        }
        if !reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http" || u.scheme() == "https") {
            return Err(CodedError::config(format!(
                "`[pings] {job}` = `{url}` is not an http(s) URL"
            )));
        }
    }
    if config.alerts.missed_starts == 0 {
        return Err(CodedError::config(
            "`[alerts] missed_starts` must be at least 1",
        ));
    }
    if canopus.timeout_secs == 0 {
        return Err(CodedError::config(
            "`[canopus] timeout_secs` must be at least 1",
        ));
    }
    if canopus.retries > 10 || canopus.backoff_ms > 60_000 {
        return Err(CodedError::config(format!(
            "`[canopus] retries` = {} or `backoff_ms` = {} is out of range (0 to 10 tries, 0 to 60000 ms)",
            canopus.retries, canopus.backoff_ms
        )));
    }
    if !(1..=16).contains(&canopus.concurrency) {
        return Err(CodedError::config(format!(
            "`[canopus] concurrency` = {} is out of range (1 to 16)",
            canopus.concurrency
        )));
    }
    if config.retry.max_attempts == 0 {
        return Err(CodedError::config(
            "`[retry] max_attempts` must be at least 1",
        ));
    }
    for (key, value, min, max) in ranges(config) {
        if !(min..=max).contains(&value) {
            return Err(CodedError::config(format!(
                "`{key}` = {value} is out of range ({min} to {max})"
            )));
        }
    }
    Ok(())
}

/// Every duration and count of the config with its range (shown by the configuration reference),
/// checked when the config loads: a value `config check` accepts never overflows a date or a
/// wait in a job (`CRM_JOBS_CLEANUP_SYNC_LOG_DAYS=4294967295` was a panic in cleanup).
fn ranges(c: &Config) -> Vec<(&'static str, u64, u64, u64)> {
    const YEAR_DAYS: u64 = 36_500;
    const DAY_SECS: u64 = 86_400;
    let u = u64::from;
    vec![
        (
            "[alerts] consecutive_failures",
            u(c.alerts.consecutive_failures),
            0,
            1000,
        ),
        (
            "[alerts] error_rate_percent",
            u(c.alerts.error_rate_percent),
            0,
            100,
        ),
        (
            "[alerts] max_run_minutes",
            u(c.alerts.max_run_minutes),
            0,
            10_080,
        ),
        ("[alerts] missed_starts", u(c.alerts.missed_starts), 1, 100),
        (
            "[alerts] grace_minutes",
            u(c.alerts.grace_minutes),
            0,
            10_080,
        ),
        (
            "[nio] bootstrap_ttl_minutes",
            u(c.nio.bootstrap_ttl_minutes),
            0,
            1440,
        ),
        (
            "[nio] connect_timeout_secs",
            c.nio.connect_timeout_secs,
            1,
            600,
        ),
        ("[nio] timeout_secs", c.nio.timeout_secs, 1, 3600),
        ("[nio] request_retries", u(c.nio.request_retries), 0, 10),
        ("[nio] retry_backoff_ms", c.nio.retry_backoff_ms, 0, 60_000),
        (
            "[nio] max_retry_after_secs",
            c.nio.max_retry_after_secs,
            0,
            DAY_SECS,
        ),
        (
            "[canopus] user_code_digits",
            c.canopus.user_code_digits as u64,
            1,
            20,
        ),
        ("[canopus] timeout_secs", c.canopus.timeout_secs, 1, 3600),
        (
            "[crm] rate_limit_per_minute",
            u(c.crm.rate_limit_per_minute),
            0,
            1_000_000,
        ),
        ("[crm] timeout_secs", c.crm.timeout_secs, 1, 3600),
        ("[sync] batch", u(c.sync.batch), 1, 1_000_000),
        ("[sync] max_attempts", u(c.sync.max_attempts), 1, 100),
        ("[sync] backoff_secs", c.sync.backoff_secs, 0, DAY_SECS),
        ("[sync] defer_secs", c.sync.defer_secs, 0, DAY_SECS),
        (
            "[sync] max_retry_after_secs",
            c.sync.max_retry_after_secs,
            0,
            DAY_SECS,
        ),
        (
            "[cleanup] sync_log_days",
            u(c.cleanup.sync_log_days),
            0,
            YEAR_DAYS,
        ),
        (
            "[cleanup] queue_done_days",
            u(c.cleanup.queue_done_days),
            0,
            YEAR_DAYS,
        ),
        (
            "[cleanup] queue_failed_days",
            u(c.cleanup.queue_failed_days),
            0,
            YEAR_DAYS,
        ),
        ("[cleanup] runs_days", u(c.cleanup.runs_days), 0, YEAR_DAYS),
        (
            "[cleanup] email_outbox_days",
            u(c.cleanup.email_outbox_days),
            0,
            YEAR_DAYS,
        ),
        (
            "[cleanup] sessions_days",
            u(c.cleanup.sessions_days),
            0,
            YEAR_DAYS,
        ),
        (
            "[cleanup] pending_payments_days",
            u(c.cleanup.pending_payments_days),
            0,
            YEAR_DAYS,
        ),
        (
            "[cleanup] diagnostics_days",
            u(c.cleanup.diagnostics_days),
            0,
            YEAR_DAYS,
        ),
        (
            "[cleanup] batch_size",
            u(c.cleanup.batch_size),
            1,
            1_000_000,
        ),
        ("[stripe] timeout_secs", c.stripe.timeout_secs, 1, 3600),
        ("[stripe] retries", u(c.stripe.retries), 0, 10),
        ("[smtp] timeout_secs", c.smtp.timeout_secs, 1, 3600),
        ("[renew] days", u(c.renew.days), 1, 60),
        ("[renew] email_batch", u(c.renew.email_batch), 1, 1_000_000),
        (
            "[renew] stripe_grace_days",
            u(c.renew.stripe_grace_days),
            0,
            365,
        ),
        ("[fetch] limit", u(c.fetch.limit), 1, 1_000_000),
        ("[retry] max_attempts", u(c.retry.max_attempts), 1, 100),
        // Checked above too, with messages of their own; listed here so that the configuration
        // reference shows their ranges.
        ("[nio] concurrency", u(c.nio.concurrency), 1, 64),
        ("[nio] page_size", u(c.nio.page_size), 1, 500),
        ("[canopus] concurrency", u(c.canopus.concurrency), 1, 16),
        ("[canopus] retries", u(c.canopus.retries), 0, 10),
        ("[canopus] backoff_ms", c.canopus.backoff_ms, 0, 60_000),
        ("[crm] concurrency", u(c.crm.concurrency), 1, 64),
        (
            "[stripe] concurrency",
            u(c.stripe.concurrency),
            1,
            u64::from(u32::MAX),
        ),
    ]
}

/// A secret: from the environment variable `env`, else from the file `file` (trailing newline
/// dropped). The value is never logged.
pub fn secret(env: &str, file: Option<&Path>) -> Result<Option<String>> {
    if let Ok(v) = std::env::var(env)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    let file_env = format!("{env}_FILE");
    let from_env_file = std::env::var(&file_env).ok().filter(|v| !v.is_empty());
    let path = from_env_file
        .map(PathBuf::from)
        .or_else(|| file.map(Path::to_path_buf));
    match path {
        Some(p) => {
            let text = crate::files::read_text_limited(&p, 64 * 1024).map_err(|e| {
                CodedError::config(format!(
                    "cannot read the secret file `{}` (from {file_env} or the config): {e}; check the path and that this user may read it",
                    p.display()
                ))
            })?;
            let v = text.trim_end_matches(['\n', '\r']).to_string();
            if v.is_empty() {
                return Err(CodedError::config(format!(
                    "the secret file `{}` is empty: write the secret in it",
                    p.display()
                )));
            }
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .context("cannot read the working directory")?
            .join(p))
    }
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set: set `[store] path` in the config or pass --db")
}

fn config_home() -> Result<PathBuf> {
    match std::env::var_os("XDG_CONFIG_HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)),
        None => Ok(home()?.join(".config")),
    }
}

fn data_home() -> Result<PathBuf> {
    match std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)),
        None => Ok(home()?.join(".local").join("share")),
    }
}

/// One key of the configuration, as the configuration reference documents it
/// (`docs/src/reference/config.md`, rendered by [`reference_markdown`]). Its default is not
/// written here: it is read from [`Config::default`], and its range from the checks made when
/// the config loads.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The section, dotted as in the file: `nio`, `nio.fields`, `crm.resources`,
    /// `schedule.<name>`.
    pub section: &'static str,
    /// The key; `<entity>` or `<job>` for an entry of a table of entries.
    pub key: &'static str,
    /// `string`, `integer`, `boolean`, `path`, `URL`, `address` or `array of strings`.
    pub kind: &'static str,
    /// For a key without a default value: what leaving it out means. Empty for a key with one.
    pub unset: &'static str,
    /// What the key does (Markdown, links relative to `docs/src/reference/`).
    pub doc: &'static str,
}

const fn key(
    section: &'static str,
    key: &'static str,
    kind: &'static str,
    unset: &'static str,
    doc: &'static str,
) -> KeyDoc {
    KeyDoc {
        section,
        key,
        kind,
        unset,
        doc,
    }
}

/// Each section of the configuration, in the reference's order, with what it is for.
pub const SECTION_DOCS: &[(&str, &str)] = &[
    ("store", "Where the SQLite store lives."),
    (
        "downloads",
        "Where the files the jobs download are written (invoice PDFs, boletos).",
    ),
    (
        "nio",
        "The Nio Negocia API, for `fetch-invoices` and `retry` (see [Services](services.md#nio-negocia-api) and [fetch-invoices](../jobs/fetch-invoices.md)).",
    ),
    (
        "nio.fields",
        "The JSON field names of the Nio API's answers, so that a differently dressed API is reached by configuration alone (see [A differently dressed API](../commands/config.md#a-differently-dressed-api)).",
    ),
    ("fetch", "Defaults of `fetch-invoices`."),
    (
        "retry",
        "Defaults of `retry` and of the final retry pass of `fetch-invoices` (see [retry](../jobs/retry.md)).",
    ),
    (
        "canopus",
        "The Canopus portal, for `download-boletos` (see [Services](services.md#canopus-portal) and [download-boletos](../jobs/download-boletos.md)). Paths and control names default to the real portal's, so that a changed portal is reached by configuration alone (see [A changed portal](../commands/config.md#a-changed-portal)).",
    ),
    (
        "credentials",
        "How the portal passwords stored by `credentials set` are sealed (see [credentials](../commands/credentials.md)).",
    ),
    (
        "crm",
        "The CRM's REST API, for `sync-queue` (see [Services](services.md#the-crm) and [sync-queue](../jobs/sync-queue.md)).",
    ),
    (
        "crm.resources",
        "Each entity's resource path under `[crm] base_url`; the entities `enqueue` accepts. Written in the file, this table replaces the default one as a whole: list every entity (one left out cannot be enqueued).",
    ),
    (
        "crm.references",
        "The references of each entity's payload translated to CRM ids before it is sent (see [References](../jobs/sync-queue.md#references)). Merged with the defaults entity by entity: an entity written here replaces that entity's default, the others keep theirs.",
    ),
    (
        "crm.natural_keys",
        "How a record is looked up at the CRM before a create whose outcome is unknown is sent again (see [Unknown outcomes](../jobs/sync-queue.md#unknown-outcomes)). Merged with the defaults entity by entity.",
    ),
    ("sync", "The CRM outbox drain, `sync-queue`."),
    (
        "sync.priorities",
        "The priority of each entity, higher first; an item's own `priority` wins. Merged with the defaults entity by entity.",
    ),
    (
        "cleanup",
        "Retention of old rows, in days, and the size of the batches of `cleanup` (see [cleanup](../jobs/cleanup.md)).",
    ),
    (
        "stripe",
        "Stripe's API, for `renew --step stripe` (see [Services](services.md#stripe) and [renew](../jobs/renew.md)).",
    ),
    (
        "smtp",
        "How `renew` and the alerts send their emails (see [Services](services.md#smtp) and [The outbox](../jobs/renew.md#the-outbox)).",
    ),
    (
        "renew",
        "The subscription steps of `renew` (see [renew](../jobs/renew.md)).",
    ),
    (
        "metrics",
        "The Prometheus textfile written after every run (see [Metrics](../operating/monitoring.md#metrics-node_exporters-textfile-collector)).",
    ),
    (
        "tls",
        "What the HTTPS clients (Nio, Canopus, CRM, Stripe, pings, `doctor`) trust besides the system's certificate authorities.",
    ),
    (
        "pings",
        "A Healthchecks.io-style ping URL per job (see [Health pings](../operating/monitoring.md#health-pings)).",
    ),
    (
        "alerts",
        "Incidents and their emails (see [Alerts](../operating/monitoring.md#alerts)).",
    ),
    (
        "alerts.stale_hours",
        "Per job: hours without a successful run that open a `stale` incident, instead of the schedule's rule.",
    ),
    (
        "schedule.<name>",
        "When each job runs: the one source of `schedule crontab`, `schedule systemd`, `status`'s next start and the `stale` alert (see [schedule](../commands/schedule.md)). A config without `[schedule]` gets the built-in entries; a `[schedule.<name>]` of a built-in entry changes only the keys it sets, and a new name adds an entry (`cron` and `command` required). Schedule keys have no environment variables.",
    ),
];

/// Every key the configuration accepts, by section (a test checks that the parser accepts
/// exactly these, and that `docs/src/reference/config.md` is their rendering).
pub const KEYS: &[KeyDoc] = &[
    key(
        "store",
        "path",
        "path",
        "`$XDG_DATA_HOME/crm-jobs/crm-jobs.db`, else `~/.local/share/crm-jobs/crm-jobs.db`",
        "The SQLite store. `--db FILE` wins over it.",
    ),
    key(
        "downloads",
        "dir",
        "path",
        "a folder `downloads` beside the store",
        "Root of the downloaded files: `faturas/` for the invoice PDFs, one folder per consultant for the boletos.",
    ),
    key(
        "nio",
        "base_url",
        "URL",
        "required by `fetch-invoices` and `retry`, which exit 78 without it",
        "The site's root; the real one is `https://negociacao.niointernet.com.br`.",
    ),
    key(
        "nio",
        "params_path",
        "string",
        "",
        "Bootstrap path under `base_url`, answering the encrypted params.",
    ),
    key(
        "nio",
        "session_path",
        "string",
        "",
        "Session path under the API server.",
    ),
    key(
        "nio",
        "debts_path",
        "string",
        "",
        "Debts path under the API server; must hold `{cpf}`, replaced by the CPF's 11 digits.",
    ),
    key(
        "nio",
        "origin",
        "string",
        "",
        "The `origin` query parameter of the debts request.",
    ),
    key(
        "nio",
        "page_size",
        "integer",
        "",
        "Invoices asked per page (`limit`), summed over the debts of an answer; the next page is asked while an answer holds this many invoices.",
    ),
    key(
        "nio",
        "token_header",
        "string",
        "",
        "Header carrying the raw token.",
    ),
    key(
        "nio",
        "session_header",
        "string",
        "",
        "Header carrying the session id.",
    ),
    key(
        "nio",
        "pdf_url_template",
        "string",
        "no PDFs: invoices are recorded without one",
        "URL of an invoice's PDF; `{api}`, `{base}`, `{debtId}`, `{invoiceId}` and `{cpf}` are replaced (e.g. `{api}/debts/{debtId}/invoices/{invoiceId}/pdf`). See [PDFs](../jobs/fetch-invoices.md#pdfs).",
    ),
    key(
        "nio",
        "passphrase_file",
        "path",
        "the passphrase comes from the environment only",
        "File holding the passphrase, after `CRM_JOBS_NIO_PASSPHRASE` and `CRM_JOBS_NIO_PASSPHRASE_FILE` (see [Secrets](../commands/config.md#secrets)).",
    ),
    key(
        "nio",
        "bootstrap_ttl_minutes",
        "integer",
        "",
        "How long the bootstrap (params and session) is reused, across runs too (the site's own cache lives 30 minutes).",
    ),
    key(
        "nio",
        "connect_timeout_secs",
        "integer",
        "",
        "TCP connect timeout, in seconds.",
    ),
    key(
        "nio",
        "timeout_secs",
        "integer",
        "",
        "Whole-request timeout, in seconds.",
    ),
    key(
        "nio",
        "concurrency",
        "integer",
        "",
        "Customers queried at once; `--concurrency` wins.",
    ),
    key(
        "nio",
        "request_retries",
        "integer",
        "",
        "Extra tries of a request after a transient failure (`429`, `5xx`, a timeout, a reset), in place.",
    ),
    key(
        "nio",
        "retry_backoff_ms",
        "integer",
        "",
        "First wait between those tries, in milliseconds, doubled each time (a `Retry-After` wins).",
    ),
    key(
        "nio",
        "max_retry_after_secs",
        "integer",
        "",
        "Longest `Retry-After` honoured, in seconds; a longer one fails the request at once, as transient.",
    ),
    key(
        "nio.fields",
        "params_token",
        "string",
        "",
        "The token in the decrypted params.",
    ),
    key(
        "nio.fields",
        "params_api_url",
        "string",
        "",
        "The API server's URL in the decrypted params.",
    ),
    key(
        "nio.fields",
        "session_token",
        "string",
        "",
        "The session id in the session answer.",
    ),
    key(
        "nio.fields",
        "debts",
        "string",
        "",
        "The list of debts in the debts answer.",
    ),
    key("nio.fields", "debt_id", "string", "", "A debt's id."),
    key(
        "nio.fields",
        "invoices",
        "string",
        "",
        "A debt's list of invoices.",
    ),
    key("nio.fields", "invoice_id", "string", "", "An invoice's id."),
    key(
        "nio.fields",
        "amount",
        "string",
        "",
        "An invoice's amount: reais, a JSON number (`99.9`) or text (`\"99,90\"`).",
    ),
    key(
        "nio.fields",
        "due_date",
        "string",
        "",
        "An invoice's due date, `YYYYMMDD` or `YYYY-MM-DD`.",
    ),
    key(
        "nio.fields",
        "reference_month",
        "string",
        "",
        "An invoice's reference month, `YYYYMM`.",
    ),
    key("nio.fields", "status", "string", "", "An invoice's status."),
    key(
        "nio.fields",
        "barcode",
        "string",
        "",
        "An invoice's boleto: the linha digitável (47 digits) or the barcode (44 digits).",
    ),
    key(
        "nio.fields",
        "pix_code",
        "array of strings",
        "",
        "An invoice's PIX code, tried in order: the first that is not empty.",
    ),
    key(
        "nio.fields",
        "pdf_url",
        "string",
        "",
        "The field of a JSON PDF answer that holds the file's URL.",
    ),
    key(
        "fetch",
        "limit",
        "integer",
        "",
        "Contracts per `fetch-invoices` run; `--limit` wins.",
    ),
    key(
        "retry",
        "max_attempts",
        "integer",
        "",
        "Transient failures in a row after which an invoice (or its PDF) is `gave_up`; `--max-attempts` wins.",
    ),
    key(
        "canopus",
        "base_url",
        "URL",
        "required by `download-boletos`, which exits 78 without it",
        "The portal's root; the real one is `https://cnp3.consorciocanopus.com.br`.",
    ),
    key(
        "canopus",
        "login_path",
        "string",
        "",
        "The login page under `base_url`. A page that ends on it means the session expired.",
    ),
    key(
        "canopus",
        "search_path",
        "string",
        "",
        "The search page under `base_url`.",
    ),
    key(
        "canopus",
        "boletos_path",
        "string",
        "",
        "The boleto page under `base_url`.",
    ),
    key(
        "canopus",
        "user_field",
        "string",
        "",
        "The login form's user field.",
    ),
    key(
        "canopus",
        "password_field",
        "string",
        "",
        "The login form's password field.",
    ),
    key(
        "canopus",
        "login_button",
        "string",
        "",
        "The login form's button.",
    ),
    key(
        "canopus",
        "user_code_digits",
        "integer",
        "",
        "The user code is left-padded with zeros to this many digits.",
    ),
    key(
        "canopus",
        "login_message_id",
        "string",
        "",
        "Id fragment of the login page's error message.",
    ),
    key(
        "canopus",
        "criterion_field",
        "string",
        "",
        "The search criterion (an auto-postback).",
    ),
    key(
        "canopus",
        "criterion_cpf",
        "string",
        "",
        "The criterion's value that searches by CPF.",
    ),
    key(
        "canopus",
        "search_field",
        "string",
        "",
        "The search box (the CPF is typed as `000.000.000-00`).",
    ),
    key(
        "canopus",
        "search_button",
        "string",
        "",
        "The search button.",
    ),
    key(
        "canopus",
        "results_grid",
        "string",
        "",
        "Id fragment of the result grid (rows without a quota link are an error).",
    ),
    key(
        "canopus",
        "quota_link",
        "string",
        "",
        "Id fragment of the quota links of the result grid.",
    ),
    key(
        "canopus",
        "not_found_text",
        "string",
        "",
        "The search answer for a CPF that is not a client.",
    ),
    key(
        "canopus",
        "not_selected_text",
        "string",
        "",
        "The search page's answer to a grid link that was not a quota (the quota is then not opened).",
    ),
    key(
        "canopus",
        "client_cpf_id",
        "string",
        "",
        "Id fragment of the client page's element that must show the CPF searched; empty: anywhere in the page's text.",
    ),
    key(
        "canopus",
        "boletos_grid",
        "string",
        "",
        "Id fragment of the boleto grid.",
    ),
    key(
        "canopus",
        "emit_image",
        "string",
        "",
        "Name fragment of each boleto row's image button.",
    ),
    key(
        "canopus",
        "no_boleto_text",
        "string",
        "",
        "The boleto page of a quota without an open installment.",
    ),
    key(
        "canopus",
        "emit_button",
        "string",
        "",
        "The emit form's button.",
    ),
    key(
        "canopus",
        "date_field",
        "string",
        "",
        "The emit form's date field (today, `dd/mm/yyyy`).",
    ),
    key(
        "canopus",
        "kind_field",
        "string",
        "",
        "The emit form's emission kind.",
    ),
    key(
        "canopus",
        "kind_value",
        "string",
        "",
        "The emission kind posted.",
    ),
    key(
        "canopus",
        "quotas",
        "string",
        "",
        "Which quotas of a CPF to take: `each`, `first` or `last`.",
    ),
    key(
        "canopus",
        "row",
        "string",
        "",
        "Which installment to take: `month` (the one due in the month asked) or `last` (the grid's last row, as today's users do).",
    ),
    key(
        "canopus",
        "timeout_secs",
        "integer",
        "",
        "Whole-request timeout, in seconds (the connect timeout is 10 s).",
    ),
    key(
        "canopus",
        "concurrency",
        "integer",
        "",
        "Portal sessions at once per sales point, each logged in once; `--concurrency` wins.",
    ),
    key(
        "canopus",
        "retries",
        "integer",
        "",
        "Extra tries of one request (logins included) after a transient failure, in place.",
    ),
    key(
        "canopus",
        "backoff_ms",
        "integer",
        "",
        "First wait before such a try, in milliseconds, doubled each time, plus up to 50% at random.",
    ),
    key(
        "credentials",
        "fernet_key_file",
        "path",
        "the key comes from the environment only",
        "File holding the Fernet key, after `CRM_JOBS_FERNET_KEY` and `CRM_JOBS_FERNET_KEY_FILE` (see [Secrets](../commands/config.md#secrets)).",
    ),
    key(
        "crm",
        "base_url",
        "URL",
        "required by `sync-queue`, which exits 78 without it",
        "The API's root; the real one is `https://api.beteltecnologia.com`.",
    ),
    key(
        "crm",
        "access_token_header",
        "string",
        "",
        "Header carrying the access token (`CRM_JOBS_CRM_ACCESS_TOKEN`).",
    ),
    key(
        "crm",
        "secret_token_header",
        "string",
        "",
        "Header carrying the secret token (`CRM_JOBS_CRM_SECRET_ACCESS_TOKEN`).",
    ),
    key(
        "crm",
        "access_token_file",
        "path",
        "the token comes from the environment only",
        "File holding the access token, after `CRM_JOBS_CRM_ACCESS_TOKEN` and `CRM_JOBS_CRM_ACCESS_TOKEN_FILE`.",
    ),
    key(
        "crm",
        "secret_token_file",
        "path",
        "the token comes from the environment only",
        "File holding the secret token, after `CRM_JOBS_CRM_SECRET_ACCESS_TOKEN` and `CRM_JOBS_CRM_SECRET_ACCESS_TOKEN_FILE`.",
    ),
    key(
        "crm",
        "id_pointer",
        "string",
        "",
        "JSON pointer of the record's id in an answer (a string or a number).",
    ),
    key(
        "crm",
        "message_pointer",
        "string",
        "",
        "JSON pointer of the message in an error answer.",
    ),
    key(
        "crm",
        "rate_limit_per_minute",
        "integer",
        "",
        "Requests a minute, for every process together; `0`: no limit of our own (see [The rate limit](../jobs/sync-queue.md#the-rate-limit)).",
    ),
    key(
        "crm",
        "timeout_secs",
        "integer",
        "",
        "Whole-request timeout, in seconds (the connect timeout is 10 s).",
    ),
    key(
        "crm",
        "concurrency",
        "integer",
        "",
        "Requests in flight at once; `sync-queue --concurrency` wins.",
    ),
    key(
        "crm",
        "list_pointer",
        "string",
        "",
        "JSON pointer of the records of a list answer (for the lookups by natural key).",
    ),
    key(
        "crm",
        "list_id_pointer",
        "string",
        "",
        "JSON pointer of a record's id within one record of a list answer.",
    ),
    key(
        "crm.resources",
        "<entity>",
        "string",
        "",
        "The entity's resource path, e.g. `atividades = \"/orcamentos\"`.",
    ),
    key(
        "crm.references",
        "<entity>",
        "array of strings",
        "",
        "The entity's references, each `\"/json/pointer=entity\"`: a JSON pointer into the payload, `*` standing for every element of a list, and the entity whose ids are found there (an entity of `[crm.resources]`). `[]`: translate none.",
    ),
    key(
        "crm.natural_keys",
        "<entity>",
        "string",
        "",
        "The entity's natural key, `\"/json/pointer=filter\"`: the payload's value at the pointer, asked with the list filter of that name (an entity of `[crm.resources]`).",
    ),
    key(
        "sync",
        "batch",
        "integer",
        "",
        "Items sent per `sync-queue` run; `--batch` wins.",
    ),
    key(
        "sync",
        "max_attempts",
        "integer",
        "",
        "Transient failures after which an item is `failed`; `--max-attempts` wins.",
    ),
    key(
        "sync",
        "backoff_secs",
        "integer",
        "",
        "Wait after the first transient failure, in seconds, doubled at each further one.",
    ),
    key(
        "sync",
        "defer_secs",
        "integer",
        "",
        "Wait of an item whose reference has no CRM id yet, in seconds (woken sooner when it is synced).",
    ),
    key(
        "sync",
        "max_retry_after_secs",
        "integer",
        "",
        "Longest `429` pause waited out, and kept in the store, in seconds; a `429` asking for more ends the run's sending (items untouched; a run that sent nothing then fails, saying so).",
    ),
    key(
        "sync.priorities",
        "<entity>",
        "integer",
        "",
        "The entity's priority, higher first.",
    ),
    key(
        "cleanup",
        "sync_log_days",
        "integer",
        "",
        "Retention of the CRM request log.",
    ),
    key(
        "cleanup",
        "queue_done_days",
        "integer",
        "",
        "Retention of queue items `done` or `superseded`.",
    ),
    key(
        "cleanup",
        "queue_failed_days",
        "integer",
        "",
        "Retention of queue items `failed`.",
    ),
    key(
        "cleanup",
        "runs_days",
        "integer",
        "",
        "Retention of the run history, and of the skipped starts of paused jobs.",
    ),
    key(
        "cleanup",
        "email_outbox_days",
        "integer",
        "",
        "Retention of emails `sent` or `failed` (from when they were queued).",
    ),
    key(
        "cleanup",
        "sessions_days",
        "integer",
        "",
        "Sessions expired longer ago than this are soft-deleted.",
    ),
    key(
        "cleanup",
        "pending_payments_days",
        "integer",
        "",
        "Payments pending for longer than this are cancelled.",
    ),
    key(
        "cleanup",
        "diagnostics_days",
        "integer",
        "",
        "Saved portal pages (`diagnostics/` beside the store) older than this are removed.",
    ),
    key(
        "cleanup",
        "batch_size",
        "integer",
        "",
        "Rows deleted (or changed) per transaction: the write lock is held that long only.",
    ),
    key(
        "stripe",
        "base_url",
        "URL",
        "required by `renew --step stripe`, which exits 78 without it",
        "The API's root; the real one is `https://api.stripe.com`.",
    ),
    key(
        "stripe",
        "api_version",
        "string",
        "",
        "The pinned `Stripe-Version` header; answers of older versions are read too.",
    ),
    key(
        "stripe",
        "secret_key_file",
        "path",
        "the key comes from the environment only",
        "File holding the secret key, after `CRM_JOBS_STRIPE_SECRET_KEY` and `CRM_JOBS_STRIPE_SECRET_KEY_FILE`. A restricted key that may read subscriptions is enough.",
    ),
    key(
        "stripe",
        "timeout_secs",
        "integer",
        "",
        "Whole-request timeout, in seconds (the connect timeout is 10 s).",
    ),
    key(
        "stripe",
        "concurrency",
        "integer",
        "",
        "Subscriptions asked at once.",
    ),
    key(
        "stripe",
        "retries",
        "integer",
        "",
        "Extra tries of a request after a `429` (as `Retry-After` says), a `5xx`, a timeout or a connection failure. A `429` asking to wait more than 120 s is not waited out: that subscription's error for this run.",
    ),
    key(
        "smtp",
        "mode",
        "string",
        "",
        "`smtp` sends; `eml` writes each message as a `.eml` file into `eml_dir` (development).",
    ),
    key(
        "smtp",
        "host",
        "string",
        "required by `renew --step emails` in `smtp` mode, which exits 78 without it",
        "The SMTP server.",
    ),
    key(
        "smtp",
        "port",
        "integer",
        "",
        "Its port (465 for `tls`, 25 or 587 for `none` and `starttls`).",
    ),
    key(
        "smtp",
        "tls",
        "string",
        "",
        "`none`, `starttls` (required: no message goes out in clear text) or `tls` (implicit TLS from the first byte).",
    ),
    key(
        "smtp",
        "user",
        "string",
        "no AUTH",
        "User for AUTH; the password comes from `CRM_JOBS_SMTP_PASSWORD` or `password_file`, and is read only when a user is set.",
    ),
    key(
        "smtp",
        "password_file",
        "path",
        "the password comes from the environment only",
        "File holding the password, after `CRM_JOBS_SMTP_PASSWORD` and `CRM_JOBS_SMTP_PASSWORD_FILE`.",
    ),
    key(
        "smtp",
        "ca_file",
        "path",
        "the OS's CAs",
        "PEM certificates to trust instead of the OS's CAs: the server's own certificate (a self-signed one, `CA:TRUE` or not, is accepted as the server's when it presents exactly that certificate), or the CA that signed it. The name is still checked (see `tls_server_name`), and so are the dates. A file that cannot be read or holds no certificate exits 78.",
    ),
    key(
        "smtp",
        "tls_server_name",
        "string",
        "the name in `host`",
        "The name the server's certificate must carry.",
    ),
    key(
        "smtp",
        "from",
        "address",
        "",
        "The sender, `From:`; must be an address (`Equipe <nao-responda@example.com>`).",
    ),
    key(
        "smtp",
        "eml_dir",
        "path",
        "required in `eml` mode",
        "Folder of the `.eml` files (created if needed).",
    ),
    key(
        "smtp",
        "timeout_secs",
        "integer",
        "",
        "Network timeout of the SMTP connection, in seconds: to connect, for the TLS handshake, for each write and for each reply.",
    ),
    key(
        "renew",
        "days",
        "integer",
        "",
        "Warn the subscriptions whose period ends within this many days; `--days` wins.",
    ),
    key(
        "renew",
        "app_name",
        "string",
        "",
        "The product's name in the emails (`{{ app }}`).",
    ),
    key(
        "renew",
        "message_id_domain",
        "string",
        "",
        "Domain of the Message-IDs; set it to a domain of yours.",
    ),
    key(
        "renew",
        "email_batch",
        "integer",
        "",
        "Emails sent per run at most.",
    ),
    key(
        "renew",
        "stripe_grace_days",
        "integer",
        "",
        "A Stripe subscription (`gateway = 'stripe'`) whose period ended less than this many days ago is not expired, and the `stripe` step looks back this far; `0`: today only, expired as soon as ended.",
    ),
    key(
        "metrics",
        "textfile_dir",
        "path",
        "no file",
        "Folder of `crm_jobs.prom`, rewritten after every run for node_exporter's textfile collector.",
    ),
    key(
        "tls",
        "ca_file",
        "path",
        "the system's CAs only",
        "PEM file of extra certificates trusted by the HTTPS clients besides the system's: CAs (a company proxy's), or a server's own self-signed certificate (as for `[smtp] ca_file`). Certificates are always verified, and a refused one says to look here. `[smtp] ca_file` is SMTP's own. A file that cannot be read or holds no certificate exits 78.",
    ),
    key(
        "pings",
        "<job>",
        "URL",
        "no ping",
        "The job's Healthchecks.io ping URL, e.g. `sync-queue = \"https://hc-ping.com/<uuid>\"`. Keys are job names (`fetch-invoices`, `retry`, `download-boletos`, `sync-queue`, `cleanup`, `renew`); a `_` stands for `-`, so that the environment can name them.",
    ),
    key(
        "alerts",
        "to",
        "address",
        "no alert",
        "Who gets the alerts: one email per incident, and one when it clears.",
    ),
    key(
        "alerts",
        "consecutive_failures",
        "integer",
        "",
        "Failed runs in a row that open a `consecutive_failures` incident.",
    ),
    key(
        "alerts",
        "error_rate_percent",
        "integer",
        "",
        "A run of at least 5 items with more than this share of failed items opens an `error_rate` incident.",
    ),
    key(
        "alerts",
        "max_run_minutes",
        "integer",
        "",
        "A run longer than this opens a `slow_run` incident.",
    ),
    key(
        "alerts",
        "missed_starts",
        "integer",
        "",
        "Scheduled starts a job may miss (no success since) before a `stale` incident opens.",
    ),
    key(
        "alerts",
        "grace_minutes",
        "integer",
        "",
        "Minutes a scheduled start is given to succeed before it counts as missed.",
    ),
    key(
        "alerts",
        "idle_with_work",
        "boolean",
        "",
        "A run that did nothing while work was waiting for it opens an `idle` incident.",
    ),
    key(
        "alerts.stale_hours",
        "<job>",
        "integer",
        "the schedule's rule: `missed_starts` and `grace_minutes`",
        "Hours without a successful run of this job that open a `stale` incident. A `_` in the key stands for `-`.",
    ),
    key(
        "schedule.<name>",
        "cron",
        "string",
        "the built-in entry's; required for a new entry",
        "A crontab(5) expression: five fields of numbers, names, `*`, `,`, `-`, `/`, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. A restricted day of month and a restricted day of week match either, as in cron; croner's extensions `L`, `W`, `#` and `?` are refused, since cron would refuse them.",
    ),
    key(
        "schedule.<name>",
        "timezone",
        "string",
        "read in `America/Sao_Paulo`",
        "The IANA zone the expression is read in.",
    ),
    key(
        "schedule.<name>",
        "command",
        "string",
        "the built-in entry's; required for a new entry",
        "The crm-jobs subcommand and its flags, checked as a command line when the config loads (a typo fails `config check`, not at 3 a.m.); no quotes, no shell syntax, no `%`, which cron would turn into a newline.",
    ),
    key(
        "schedule.<name>",
        "then",
        "string",
        "nothing runs after",
        "A command run right after: in cron after `;`, under systemd as `ExecStartPost=`, which runs when the command ended 0, 3 or 75.",
    ),
    key(
        "schedule.<name>",
        "description",
        "string",
        "the built-in entry's",
        "One line: the crontab comment and the unit's `Description=`.",
    ),
    key(
        "schedule.<name>",
        "randomized_delay",
        "string",
        "a delay of `2min`",
        "systemd's `RandomizedDelaySec=`; `\"0\"`: none. cron has none.",
    ),
    key(
        "schedule.<name>",
        "quiet",
        "boolean",
        "not quiet",
        "Under cron, run with `--quiet`: mail only warnings and errors.",
    ),
    key(
        "schedule.<name>",
        "enabled",
        "boolean",
        "enabled",
        "`false` drops the entry.",
    ),
];

/// The environment variable that sets a key (`CRM_JOBS_<SECTION>_<KEY>`, upper case); `None`
/// for the schedule, which has none.
pub fn env_var(section: &str, key: &str) -> Option<String> {
    if section.starts_with("schedule") {
        return None;
    }
    Some(
        format!(
            "CRM_JOBS_{}_{}",
            section.replace('.', "_"),
            key.replace('-', "_")
        )
        .to_uppercase(),
    )
}

/// The configuration reference, `docs/src/reference/config.md`: every key of [`KEYS`] by
/// section, with its default read from [`Config::default`] and its range from the checks of
/// `validate`. A test keeps the file equal to this text.
pub fn reference_markdown() -> String {
    use std::fmt::Write;
    let defaults = toml::Table::try_from(Config::default()).expect("the defaults encode as TOML");
    let ranges = ranges(&Config::default());
    let mut out = String::from(
        "<!-- Generated from src/config.rs (`config::KEYS`, `config::reference_markdown`): do not edit.\n     \
         After changing a key, run `UPDATE_DOCS=1 cargo test --test cli docs::` to write this file again. -->\n\n\
         # Configuration reference\n\n\
         Every key of the configuration file, by section, as the code defines it: the defaults are\n\
         those of the code, the ranges those checked when the configuration loads (a value out of\n\
         range exits 78, naming the key). Each key can also be set by its environment variable,\n\
         which wins over the file; a command-line flag wins over both (see\n\
         [config](../commands/config.md) for where the file is found, the precedence and the\n\
         secrets, which never live in the file). `config.example.toml` holds every key with a\n\
         comment.\n",
    );
    for (section, about) in SECTION_DOCS {
        let _ = write!(out, "\n## `[{section}]`\n\n{about}\n");
        for k in KEYS.iter().filter(|k| k.section == *section) {
            let _ = write!(out, "\n### `[{section}] {}`\n\n{}\n\n", k.key, k.doc);
            let range = ranges
                .iter()
                .find(|(name, ..)| *name == format!("[{section}] {}", k.key))
                .map(|(_, _, min, max)| {
                    if *max >= u64::from(u32::MAX) {
                        format!(", at least {min}")
                    } else {
                        format!(", {min} to {max}")
                    }
                })
                .unwrap_or_default();
            let _ = writeln!(out, "- Type: {}{range}", k.kind);
            let _ = writeln!(out, "- Default: {}", default_text(&defaults, k));
            match env_var(section, k.key) {
                Some(var) if RESERVED_ENV.contains(&var.as_str()) => {
                    let _ = writeln!(
                        out,
                        "- Environment: `{var}`, the secret's own variable, which wins over this key (see [Secrets](../commands/config.md#secrets))"
                    );
                }
                Some(var) => {
                    let _ = writeln!(out, "- Environment: `{var}`");
                }
                None => out.push_str("- Environment: none\n"),
            }
        }
    }
    out
}

/// A key's default as the reference shows it: the TOML value of [`Config::default`] (every
/// entry, for a table of entries), else what leaving it out means.
fn default_text(defaults: &toml::Table, k: &KeyDoc) -> String {
    let mut value = Some(defaults);
    for part in k.section.split('.') {
        value = value.and_then(|t| t.get(part)).and_then(|v| v.as_table());
    }
    let shown = match value {
        Some(table) if k.key.starts_with('<') && !table.is_empty() => Some(
            table
                .iter()
                .map(|(name, v)| format!("`{name} = {v}`"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Some(table) => table.get(k.key).map(|v| format!("`{v}`")),
        None => None,
    };
    match shown {
        Some(text) => text,
        None => format!("unset ({})", k.unset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment variable the reference names for each key is the one `env_overrides`
    /// reads as that key: its section is found the same way (the longest section first).
    #[test]
    fn each_documented_variable_sets_its_key() {
        for k in KEYS {
            let key = if k.key.starts_with('<') { "x" } else { k.key };
            let Some(name) = env_var(k.section, key) else {
                assert!(k.section.starts_with("schedule"), "{k:?} has no variable");
                continue;
            };
            if RESERVED_ENV.contains(&name.as_str()) {
                // A secret's own `*_FILE` variable, which the reference says wins over the key.
                assert!(key.ends_with("_file"), "{name} is reserved");
                continue;
            }
            let rest = name["CRM_JOBS_".len()..].to_ascii_lowercase();
            let section = SECTIONS
                .iter()
                .find(|s| rest.starts_with(&format!("{}_", s.replace('.', "_"))))
                .unwrap_or_else(|| panic!("{name} names no section"));
            assert_eq!(*section, k.section, "{name}");
            assert_eq!(&rest[section.len() + 1..], key, "{name}");
        }
    }
}
