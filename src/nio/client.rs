//! The Nio API client. One bootstrap (params, then a session) serves every worker of a run and
//! later runs while it is fresh; a 401/403 re-bootstraps once. Transient failures (429, 5xx,
//! timeouts, resets) are tried again in place with backoff; what cannot succeed for any customer
//! (captcha wall, changed API, wrong passphrase) is a [`NioError::Stop`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::config::NioConfig;
use crate::domain::cpf::Cpf;
use crate::domain::{matching, money};
use crate::store::NioSessionCache;

use super::crypto;

/// How a request failed, by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum NioError {
    /// Nothing will work for any customer: stop the run with this message.
    #[error("{0}")]
    Stop(String),
    /// May work later (429, 5xx, timeout, reset).
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will not work by trying again.
    #[error("{0}")]
    Permanent(String),
}

impl NioError {
    fn transient(message: impl Into<String>) -> NioError {
        NioError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// `transient` or `permanent`, as stored (a stop is neither).
    pub fn kind(&self) -> crate::store::ErrorKind {
        match self {
            NioError::Transient { .. } => crate::store::ErrorKind::Transient,
            _ => crate::store::ErrorKind::Permanent,
        }
    }
}

/// One invoice as the API listed it.
#[derive(Debug, Clone)]
pub struct NioInvoice {
    pub debt_id: String,
    pub invoice_id: String,
    pub amount_centavos: Option<i64>,
    pub due_date: Option<NaiveDate>,
    /// The due date as answered, for messages when it did not parse.
    pub due_date_raw: Option<String>,
    pub reference_month: Option<String>,
    pub status: Option<String>,
    pub barcode: Option<String>,
    pub pix_code: Option<String>,
}

/// The answer for one CPF.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Open invoices (possibly none).
    Invoices(Vec<NioInvoice>),
    /// `400`: the CPF is unknown or has no open debt.
    NoDebts,
}

#[derive(Clone)]
struct Auth {
    generation: u64,
    token: String,
    api: String,
    session: String,
    params_sealed: String,
    obtained_at: DateTime<Utc>,
}

enum PageError {
    Unauthorized,
    Other(NioError),
}

/// A client for one run.
pub struct NioClient {
    http: reqwest::Client,
    cfg: NioConfig,
    base: String,
    key: [u8; 32],
    token_header: HeaderName,
    session_header: HeaderName,
    auth: tokio::sync::Mutex<Option<Auth>>,
    /// Set by the first stop-the-run failure of a bootstrap, so that no worker tries again.
    stopped: std::sync::Mutex<Option<String>>,
    requests: AtomicU64,
    bootstraps: AtomicU64,
}

impl NioClient {
    /// Builds the client; `cache` is the bootstrap kept by an earlier run.
    pub fn new(
        cfg: &NioConfig,
        passphrase: &str,
        cache: Option<NioSessionCache>,
    ) -> anyhow::Result<NioClient> {
        let base = cfg.base_url.clone().ok_or_else(|| {
            crate::exit::CodedError::config(
                "`[nio] base_url` is not set: set it in the config file or `CRM_JOBS_NIO_BASE_URL` (the real site is https://negociacao.niointernet.com.br)",
            )
        })?;
        let http = crate::http::builder()
            .user_agent(concat!("crm-jobs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .pool_max_idle_per_host(cfg.concurrency as usize)
            .build()?;
        let header = |name: &str, key: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                crate::exit::CodedError::config(format!(
                    "`[nio] {key}` = `{name}` is not a valid HTTP header name"
                ))
            })
        };
        let key = crypto::key(passphrase);
        let client = NioClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token_header: header(&cfg.token_header, "token_header")?,
            session_header: header(&cfg.session_header, "session_header")?,
            cfg: cfg.clone(),
            key,
            auth: tokio::sync::Mutex::new(None),
            stopped: std::sync::Mutex::new(None),
            requests: AtomicU64::new(0),
            bootstraps: AtomicU64::new(0),
        };
        if let Some(cache) = cache
            && let Some(auth) = client.restore(&cache)
        {
            *client.auth.try_lock().expect("no one else holds it yet") = Some(auth);
        }
        Ok(client)
    }

    /// HTTP requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bootstraps done by this client (0 when the cache served).
    pub fn bootstraps(&self) -> u64 {
        self.bootstraps.load(Ordering::Relaxed)
    }

    /// The bootstrap to keep for the next run, sealed.
    pub async fn cache(&self) -> Option<NioSessionCache> {
        let auth = self.auth.lock().await;
        auth.as_ref().map(|a| NioSessionCache {
            params: a.params_sealed.clone(),
            session: Some(crypto::seal(&self.key, a.session.as_bytes())),
            obtained_at: crate::clock::to_store(a.obtained_at),
        })
    }

    fn restore(&self, cache: &NioSessionCache) -> Option<Auth> {
        let obtained_at = crate::clock::from_store(&cache.obtained_at)?;
        // The site's cache lives in real time, whatever `CRM_JOBS_NOW` says.
        let age = Utc::now().signed_duration_since(obtained_at);
        if age < chrono::Duration::zero()
            || age > chrono::Duration::minutes(self.cfg.bootstrap_ttl_minutes as i64)
        {
            return None;
        }
        let (token, api) = self.read_params(&cache.params).ok()?;
        let session = crypto::open(&self.key, cache.session.as_deref()?).ok()?;
        Some(Auth {
            generation: 0,
            token,
            api,
            session: String::from_utf8(session).ok()?,
            params_sealed: cache.params.clone(),
            obtained_at,
        })
    }

    fn read_params(&self, sealed: &str) -> Result<(String, String), NioError> {
        let plain = crypto::open(&self.key, sealed).map_err(|e| {
            NioError::Stop(format!(
                "cannot decrypt the Nio bootstrap params: {e}. The passphrase embedded in the site's JavaScript has probably changed: update `CRM_JOBS_NIO_PASSPHRASE`"
            ))
        })?;
        let json: Value = serde_json::from_slice(&plain).map_err(|_| {
            NioError::Stop(
                "the decrypted Nio bootstrap params are not JSON: the passphrase or the site changed; check `CRM_JOBS_NIO_PASSPHRASE`".into(),
            )
        })?;
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    NioError::Stop(format!(
                        "the Nio bootstrap params have no `{name}` field: the site changed; see `[nio.fields]`"
                    ))
                })
        };
        Ok((
            field(&self.cfg.fields.params_token)?,
            field(&self.cfg.fields.params_api_url)?
                .trim_end_matches('/')
                .to_string(),
        ))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, NioError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        req.send().await.map_err(|e| describe_reqwest(&e))
    }

    /// Bootstraps: params, then a session.
    async fn bootstrap(&self, generation: u64) -> Result<Auth, NioError> {
        self.bootstraps.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}{}", self.base, self.cfg.params_path);
        let resp = self.send(self.http.get(&url)).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(NioError::Stop(format!(
                "the Nio site answered {status} to `{url}`: it wants a browser and a reCAPTCHA (captcha wall). Stopping the run instead of insisting; try again later"
            )));
        }
        let body = resp
            .text()
            .await
            .map_err(|e| NioError::transient(format!("reading the Nio params: {e}")))?;
        let (token, api) = self.read_params(&body)?;
        let session_url = format!("{api}{}", self.cfg.session_path);
        let resp = self
            .send(
                self.http
                    .get(&session_url)
                    .header(self.token_header.clone(), header_value(&token)?),
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(NioError::Transient {
                message: format!("the Nio session endpoint answered {status}"),
                retry_after: crate::retry::retry_after(resp.headers()),
            });
        }
        if !status.is_success() {
            return Err(NioError::Stop(format!(
                "the Nio session endpoint `{session_url}` answered {status} to a fresh token: the API changed; check `[nio] session_path`"
            )));
        }
        let json: Value = resp.json().await.map_err(|_| {
            NioError::Stop(format!(
                "the Nio session endpoint `{session_url}` did not answer JSON: the API changed"
            ))
        })?;
        let session = json
            .get(&self.cfg.fields.session_token)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                NioError::Stop(format!(
                    "the Nio session answer has no `{}` field: the API changed; see `[nio.fields] session_token`",
                    self.cfg.fields.session_token
                ))
            })?
            .to_string();
        Ok(Auth {
            generation,
            token,
            api,
            session,
            params_sealed: body.trim().to_string(),
            obtained_at: Utc::now(),
        })
    }

    /// The current auth, bootstrapping if there is none, it is stale, or it is the generation
    /// that just failed.
    async fn auth(&self, failed_generation: Option<u64>) -> Result<Auth, NioError> {
        let mut slot = self.auth.lock().await;
        if let Some(m) = self.stopped.lock().expect("stop lock").clone() {
            return Err(NioError::Stop(m));
        }
        let ttl = chrono::Duration::minutes(self.cfg.bootstrap_ttl_minutes as i64);
        if let Some(a) = slot.as_ref() {
            let stale = Utc::now().signed_duration_since(a.obtained_at) > ttl;
            if Some(a.generation) != failed_generation && !stale {
                return Ok(a.clone());
            }
        }
        let next = slot.as_ref().map_or(1, |a| a.generation + 1);
        let mut tries = 0;
        let fresh = loop {
            let err = match self.bootstrap(next).await {
                Ok(a) => break a,
                Err(e) => e,
            };
            // Nothing works without a bootstrap: once its own tries are spent, the run stops
            // with one message instead of failing every contract the same way.
            let err = match self.backoff(err, &mut tries).await {
                Ok(()) => continue,
                Err(NioError::Transient { message, .. }) => NioError::Stop(format!(
                    "cannot bootstrap with the Nio site ({message}, after {} tries); stopping the run",
                    tries + 1
                )),
                Err(e) => e,
            };
            if let NioError::Stop(m) = &err {
                *self.stopped.lock().expect("stop lock") = Some(m.clone());
            }
            return Err(err);
        };
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// The open invoices of one customer, all pages.
    pub async fn debts(&self, cpf: &Cpf) -> Result<Answer, NioError> {
        let mut reauthed = false;
        let mut tries = 0;
        let mut failed_generation = None;
        loop {
            let auth = self.auth(failed_generation).await?;
            match self.all_pages(&auth, cpf).await {
                Ok(answer) => return Ok(answer),
                Err(PageError::Unauthorized) if !reauthed => {
                    tracing::debug!("Nio token or session expired; bootstrapping again");
                    reauthed = true;
                    failed_generation = Some(auth.generation);
                }
                Err(PageError::Unauthorized) => {
                    return Err(NioError::Stop(
                        "the Nio API refused a freshly bootstrapped token and session: the API changed or this client is blocked; stopping the run".into(),
                    ));
                }
                Err(PageError::Other(e)) => self.backoff(e, &mut tries).await?,
            }
        }
    }

    /// Waits before trying again, or gives the error back when the budget is spent.
    async fn backoff(&self, err: NioError, tries: &mut u32) -> Result<(), NioError> {
        let NioError::Transient {
            retry_after,
            message,
        } = &err
        else {
            return Err(err);
        };
        let policy = crate::retry::Backoff {
            retries: self.cfg.request_retries,
            first: Duration::from_millis(self.cfg.retry_backoff_ms),
            jitter: 0.0,
            max_retry_after: Some(Duration::from_secs(self.cfg.max_retry_after_secs)),
        };
        let wait = match policy.wait(*tries, *retry_after) {
            Ok(wait) => wait,
            Err(crate::retry::GiveUp::TooLong { asked }) => {
                return Err(NioError::Transient {
                    message: format!(
                        "{message} (Retry-After {}s is longer than `[nio] max_retry_after_secs`)",
                        asked.as_secs()
                    ),
                    retry_after: *retry_after,
                });
            }
            Err(crate::retry::GiveUp::Spent { .. }) => return Err(err),
        };
        *tries += 1;
        tracing::debug!("transient Nio failure ({message}); trying again in {wait:?}");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn all_pages(&self, auth: &Auth, cpf: &Cpf) -> Result<Answer, PageError> {
        let url = format!(
            "{}{}",
            auth.api,
            self.cfg.debts_path.replace("{cpf}", cpf.digits())
        );
        // What messages show: never the full CPF.
        let shown = format!(
            "{}{}",
            auth.api,
            self.cfg.debts_path.replace("{cpf}", &cpf.masked())
        );
        let mut invoices = Vec::new();
        // (debt, invoice) ids read so far: an invoice answered twice (the list moved between two
        // pages) is kept once, or it would make its due date look ambiguous.
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0u32;
        loop {
            let req = self
                .http
                .get(&url)
                .query(&[
                    ("offset", offset.to_string()),
                    ("limit", self.cfg.page_size.to_string()),
                    ("origin", self.cfg.origin.clone()),
                ])
                .header(
                    self.token_header.clone(),
                    header_value(&auth.token).map_err(PageError::Other)?,
                )
                .header(
                    self.session_header.clone(),
                    header_value(&auth.session).map_err(PageError::Other)?,
                );
            let resp = self.send(req).await.map_err(PageError::Other)?;
            let status = resp.status();
            match status.as_u16() {
                200 => {}
                400 if offset == 0 => return Ok(Answer::NoDebts),
                400 => break,
                401 | 403 => return Err(PageError::Unauthorized),
                429 => {
                    return Err(PageError::Other(NioError::Transient {
                        message: "the Nio API answered 429 Too Many Requests".into(),
                        retry_after: crate::retry::retry_after(resp.headers()),
                    }));
                }
                500..=599 => {
                    return Err(PageError::Other(NioError::Transient {
                        message: format!("the Nio API answered {status}"),
                        retry_after: crate::retry::retry_after(resp.headers()),
                    }));
                }
                _ => {
                    return Err(PageError::Other(NioError::Stop(format!(
                        "the Nio API answered {status} to `{shown}`: the API changed; check `[nio] debts_path`"
                    ))));
                }
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| PageError::Other(describe_reqwest(&e)))?;
            let json: Value = serde_json::from_slice(&body).map_err(|_| {
                PageError::Other(NioError::Stop(format!(
                    "the Nio API answered something that is not JSON to `{shown}` (starts with `{}`): the API changed",
                    preview(&body)
                )))
            })?;
            let debts = json
                .get(&self.cfg.fields.debts)
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    PageError::Other(NioError::Stop(format!(
                        "the Nio debts answer has no `{}` list: the API changed; see `[nio.fields] debts`",
                        self.cfg.fields.debts
                    )))
                })?;
            // `limit` caps the invoices of one answer, summed over its debts
            // (docs/src/reference/services.md#nio-negocia-api): a debt may be split over two pages,
            // and a page of few debts may still be full.
            let before = invoices.len();
            let mut listed = 0u32;
            for debt in debts {
                listed += self.read_debt(debt, &mut invoices, &mut seen);
            }
            if listed < self.cfg.page_size {
                break;
            }
            if invoices.len() == before {
                // A full page of invoices already read: the server does not move on with
                // `offset`, and asking again would loop.
                return Err(PageError::Other(NioError::Stop(format!(
                    "the Nio API answered the same {listed} invoices at `offset={offset}` as before to `{shown}`: it does not page as expected; check `[nio] page_size`"
                ))));
            }
            offset += self.cfg.page_size;
        }
        Ok(Answer::Invoices(invoices))
    }

    /// Reads the invoices of one debt into `out`, skipping those already read; returns how many
    /// the answer listed.
    fn read_debt(
        &self,
        debt: &Value,
        out: &mut Vec<NioInvoice>,
        seen: &mut std::collections::HashSet<(String, String)>,
    ) -> u32 {
        let f = &self.cfg.fields;
        let debt_id = scalar(debt.get(&f.debt_id)).unwrap_or_default();
        let Some(list) = debt.get(&f.invoices).and_then(Value::as_array) else {
            return 0;
        };
        for inv in list {
            let invoice_id = scalar(inv.get(&f.invoice_id)).unwrap_or_default();
            if !invoice_id.is_empty() && !seen.insert((debt_id.clone(), invoice_id.clone())) {
                continue;
            }
            let due_raw = scalar(inv.get(&f.due_date));
            out.push(NioInvoice {
                debt_id: debt_id.clone(),
                invoice_id,
                amount_centavos: inv
                    .get(&f.amount)
                    .and_then(|v| money::centavos_from_json(v).ok()),
                due_date: due_raw.as_deref().and_then(matching::parse_nio_date),
                due_date_raw: due_raw,
                reference_month: scalar(inv.get(&f.reference_month)),
                status: scalar(inv.get(&f.status)),
                barcode: scalar(inv.get(&f.barcode)),
                pix_code: f.pix_code.iter().find_map(|name| scalar(inv.get(name))),
            });
        }
        list.len() as u32
    }

    /// Downloads the PDF of an invoice; the bytes must begin with `%PDF-`. A body that is not a
    /// PDF is [`NioError::Permanent`]: one try per run.
    pub async fn pdf(&self, cpf: &Cpf, inv: &NioInvoice) -> Result<Vec<u8>, NioError> {
        let Some(template) = &self.cfg.pdf_url_template else {
            return Err(NioError::Permanent(
                "no `[nio] pdf_url_template` is set".into(),
            ));
        };
        // The ids come from Nio's answer: each stays one path segment whatever it holds.
        let segment = |what: &str, id: &str| {
            crate::http::path_segment(id).ok_or_else(|| {
                NioError::Permanent(format!("Nio answered an empty or dot {what} id `{id}`"))
            })
        };
        let (debt, invoice) = (
            segment("debt", &inv.debt_id)?,
            segment("invoice", &inv.invoice_id)?,
        );
        let mut tries = 0;
        loop {
            let auth = self.auth(None).await?;
            let url = template
                .replace("{api}", &auth.api)
                .replace("{base}", &self.base)
                .replace("{debtId}", &debt)
                .replace("{invoiceId}", &invoice)
                .replace("{cpf}", cpf.digits());
            match self.pdf_once(&auth, &url, &inv.invoice_id).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => self.backoff(e, &mut tries).await?,
            }
        }
    }

    async fn pdf_once(
        &self,
        auth: &Auth,
        url: &str,
        invoice_id: &str,
    ) -> Result<Vec<u8>, NioError> {
        let req = self
            .http
            .get(url)
            .header(self.token_header.clone(), header_value(&auth.token)?)
            .header(self.session_header.clone(), header_value(&auth.session)?);
        let resp = self.send(req).await?;
        let resp = check_status(resp, "the Nio PDF endpoint")?;
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let mut body = resp
            .bytes()
            .await
            .map_err(|e| describe_reqwest(&e))?
            .to_vec();
        if is_json || body.first() == Some(&b'{') {
            let json: Value = serde_json::from_slice(&body).map_err(|_| {
                NioError::Permanent(format!(
                    "the PDF answer for invoice `{invoice_id}` is neither a PDF nor JSON"
                ))
            })?;
            let link = json
                .get(&self.cfg.fields.pdf_url)
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    NioError::Permanent(format!(
                        "the PDF answer for invoice `{invoice_id}` is JSON without a `{}` field",
                        self.cfg.fields.pdf_url
                    ))
                })?;
            let link = Url::parse(url)
                .and_then(|u| u.join(link))
                .map_err(|_| NioError::Permanent(format!("the PDF link `{link}` is not a URL")))?;
            // A signed storage URL: no credentials go there.
            let resp = self.send(self.http.get(link)).await?;
            let resp = check_status(resp, "the PDF storage")?;
            body = resp
                .bytes()
                .await
                .map_err(|e| describe_reqwest(&e))?
                .to_vec();
        }
        if !body.starts_with(b"%PDF-") {
            // Asking again at once gets the same page (it was 9 requests over two runs): not
            // retried in place, nor in this run; the next run tries once more.
            return Err(NioError::Permanent(format!(
                "the PDF of invoice `{invoice_id}` is not a PDF ({} bytes starting with `{}`); nothing was saved",
                body.len(),
                preview(&body)
            )));
        }
        Ok(body)
    }
}

fn check_status(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, NioError> {
    use crate::retry::Verdict;
    let status = resp.status();
    match crate::retry::classify(status) {
        Verdict::Done => Ok(resp),
        // Refused: the session may have just expired; the next attempt bootstraps again.
        Verdict::Refused | Verdict::TooMany | Verdict::Transient => Err(NioError::Transient {
            message: format!("{what} answered {status}"),
            retry_after: crate::retry::retry_after(resp.headers()),
        }),
        Verdict::Permanent => Err(NioError::Permanent(format!("{what} answered {status}"))),
    }
}

fn header_value(v: &str) -> Result<HeaderValue, NioError> {
    HeaderValue::from_str(v).map_err(|_| {
        NioError::Stop(
            "the Nio token holds characters not allowed in a header: the API changed".into(),
        )
    })
}

fn describe_reqwest(e: &reqwest::Error) -> NioError {
    NioError::transient(crate::http::describe_error(e, "Nio API"))
}

/// A JSON scalar as text (ids come as numbers or strings).
fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first bytes of a body, printable.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(24)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
