//! The sandbox's Nio Negocia API (docs/src/reference/services.md#nio-negocia-api): params encrypted
//! with a passphrase, tokens that expire on demand, session ids, debts paged by invoices (a page
//! holds at most `limit` invoices, summed over its debts), `400` for unknown CPFs, PDFs (direct,
//! redirected, behind a JSON link, or a body that is not a PDF), and a captcha wall.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Value, json};

use super::faults::{Faults, Route};
use crate::nio::crypto;

/// How the PDF of an invoice is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdfKind {
    /// PDF bytes straight away.
    Direct,
    /// A redirect to the bytes.
    Redirect,
    /// JSON `{"url": ...}` pointing to the bytes.
    JsonLink,
    /// An HTML error page labelled `application/pdf`.
    NotPdf,
}

/// One invoice of a debt.
#[derive(Debug, Clone)]
pub struct SbInvoice {
    pub id: String,
    pub amount_centavos: i64,
    pub due_date: NaiveDate,
    pub status: String,
    pub barcode: String,
    pub pix_code: String,
    pub pdf: PdfKind,
    /// Writes `dueDate` as `YYYY-MM-DD` instead of `YYYYMMDD`.
    pub dashed_date: bool,
}

impl SbInvoice {
    /// An open invoice with a valid barcode and PIX code.
    pub fn new(id: &str, due_date: NaiveDate, amount_centavos: i64) -> SbInvoice {
        let digits: String = id.chars().filter(char::is_ascii_digit).collect();
        let free = format!("{:0>25}", &digits[digits.len().saturating_sub(25)..]);
        SbInvoice {
            id: id.to_string(),
            amount_centavos,
            due_date,
            status: "OPEN".into(),
            barcode: crate::domain::boleto::build_linha("341", due_date, amount_centavos, &free),
            pix_code: crate::domain::pix::build(
                "pix@niointernet.com.br",
                "NIO INTERNET",
                "RIO DE JANEIRO",
                amount_centavos,
                &format!("NIO{}", &digits[digits.len().saturating_sub(20)..]),
            ),
            pdf: PdfKind::Direct,
            dashed_date: false,
        }
    }
}

/// One debt (a product of the customer) with its invoices.
#[derive(Debug, Clone)]
pub struct SbDebt {
    pub debt_id: String,
    pub invoices: Vec<SbInvoice>,
}

impl SbDebt {
    /// Spreads a customer's invoices, in order, over `debts` debts (`{prefix}-1`, `{prefix}-2`,
    /// ...) of nearly equal size: many invoices in few debts, as a customer with several
    /// products and months overdue has.
    pub fn spread(prefix: &str, invoices: Vec<SbInvoice>, debts: usize) -> Vec<SbDebt> {
        let debts = debts.max(1);
        let per = invoices.len().div_ceil(debts).max(1);
        let mut out = Vec::new();
        let mut rest = invoices.into_iter().peekable();
        while rest.peek().is_some() {
            out.push(SbDebt {
                debt_id: format!("{prefix}-{}", out.len() + 1),
                invoices: rest.by_ref().take(per).collect(),
            });
        }
        out
    }
}

#[derive(Default)]
struct Data {
    self_url: String,
    customers: HashMap<String, Vec<SbDebt>>,
    tokens: HashSet<String>,
    sessions: HashMap<String, String>,
    captcha: bool,
    expire_after: Option<u64>,
    /// Field renames applied to debts answers (a differently dressed API).
    renames: Vec<(String, String)>,
    /// Answers the first page whatever `offset` says (an API that does not page).
    ignore_offset: bool,
    next: u64,
}

/// The state of the fake Nio API.
pub struct NioState {
    key: [u8; 32],
    data: Mutex<Data>,
    faults: Arc<Faults>,
}

impl NioState {
    pub fn new(passphrase: &str, faults: Arc<Faults>) -> NioState {
        NioState {
            key: crypto::key(passphrase),
            data: Mutex::default(),
            faults,
        }
    }

    pub(super) fn set_self_url(&self, url: &str) {
        self.data.lock().unwrap().self_url = url.to_string();
    }

    /// Sets the open debts of a customer (11-digit CPF); an empty list answers `400`.
    pub fn set_customer(&self, cpf: &str, debts: Vec<SbDebt>) {
        self.data
            .lock()
            .unwrap()
            .customers
            .insert(cpf.to_string(), debts);
    }

    /// Removes an invoice from every customer's list (it was paid).
    pub fn pay(&self, invoice_id: &str) {
        let mut data = self.data.lock().unwrap();
        for debts in data.customers.values_mut() {
            for d in debts.iter_mut() {
                d.invoices.retain(|i| i.id != invoice_id);
            }
        }
    }

    /// Makes the debts answers ignore `offset`, as an API that does not page would: every
    /// answer is the first page.
    pub fn ignore_offset(&self, on: bool) {
        self.data.lock().unwrap().ignore_offset = on;
    }

    /// Turns the captcha wall on or off.
    pub fn set_captcha(&self, on: bool) {
        self.data.lock().unwrap().captcha = on;
    }

    /// Dresses the debts answers differently: every JSON key `from` becomes `to`. The answers
    /// are also served under `/nio-api/v2/clientes/{cpf}/debitos`.
    pub fn rename_fields(&self, renames: &[(&str, &str)]) {
        self.data.lock().unwrap().renames = renames
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    }

    /// Expires every token and session now.
    pub fn expire_tokens(&self) {
        let mut data = self.data.lock().unwrap();
        data.tokens.clear();
        data.sessions.clear();
    }

    /// Expires every token after `n` more debts requests.
    pub fn expire_tokens_after(&self, n: u64) {
        self.data.lock().unwrap().expire_after = Some(n);
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let token = headers.get("authorization").and_then(|v| v.to_str().ok());
        let session = headers.get("session-id").and_then(|v| v.to_str().ok());
        let data = self.data.lock().unwrap();
        match (token, session) {
            (Some(t), Some(s)) => {
                data.tokens.contains(t) && data.sessions.get(s).is_some_and(|owner| owner == t)
            }
            _ => false,
        }
    }

    fn find_invoice(&self, invoice_id: &str) -> Option<SbInvoice> {
        let data = self.data.lock().unwrap();
        data.customers
            .values()
            .flatten()
            .flat_map(|d| d.invoices.iter())
            .find(|i| i.id == invoice_id)
            .cloned()
    }
}

#[derive(Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

pub fn routes(state: Arc<NioState>) -> Router {
    Router::new()
        .route("/nio/negociar/params", get(params))
        .route("/nio-api/authentication/sessionId", get(session))
        .route("/nio-api/debts/customers/{cpf}", get(debts))
        .route("/nio-api/v2/clientes/{cpf}/debitos", get(debts))
        .route("/nio-api/debts/{debt}/invoices/{invoice}/pdf", get(pdf))
        .route("/nio/files/{file}", get(file))
        .route(
            "/_sandbox/nio/captcha",
            axum::routing::post(
                |State(s): State<Arc<NioState>>, axum::Json(on): axum::Json<bool>| async move {
                    s.set_captcha(on);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_sandbox/nio/expire-tokens",
            axum::routing::post(|State(s): State<Arc<NioState>>| async move {
                s.expire_tokens();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(state)
}

async fn params(State(s): State<Arc<NioState>>) -> Response {
    if let Some(r) = s.faults.before(Route::NioParams).await {
        return r;
    }
    let (token, api, captcha) = {
        let mut data = s.data.lock().unwrap();
        data.next += 1;
        let token = format!("tok-{:016x}-{}", fastrand::u64(..), data.next);
        data.tokens.insert(token.clone());
        (token, format!("{}/nio-api", data.self_url), data.captcha)
    };
    if captcha {
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "text/html")],
            "<html><body><div class=\"g-recaptcha\"></div>Verifique que você não é um robô</body></html>",
        )
            .into_response();
    }
    let plain = json!({"token": token, "apiServerUrl": api}).to_string();
    (
        [("content-type", "text/plain")],
        crypto::seal(&s.key, plain.as_bytes()),
    )
        .into_response()
}

async fn session(State(s): State<Arc<NioState>>, headers: HeaderMap) -> Response {
    if let Some(r) = s.faults.before(Route::NioSession).await {
        return r;
    }
    let token = headers.get("authorization").and_then(|v| v.to_str().ok());
    let mut data = s.data.lock().unwrap();
    match token {
        Some(t) if data.tokens.contains(t) => {
            data.next += 1;
            let sid = format!("sid-{:016x}-{}", fastrand::u64(..), data.next);
            data.sessions.insert(sid.clone(), t.to_string());
            axum::Json(json!({"token": sid})).into_response()
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Unauthorized"})),
        )
            .into_response(),
    }
}

async fn debts(
    State(s): State<Arc<NioState>>,
    Path(cpf): Path<String>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = s.faults.before(Route::NioDebts).await {
        return r;
    }
    {
        let mut data = s.data.lock().unwrap();
        if let Some(n) = data.expire_after {
            if n == 0 {
                data.tokens.clear();
                data.sessions.clear();
                data.expire_after = None;
            } else {
                data.expire_after = Some(n - 1);
            }
        }
    }
    if !s.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Token expirado"})),
        )
            .into_response();
    }
    let bad = || {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Não encontramos débitos para este CPF"})),
        )
            .into_response()
    };
    if cpf.len() != 11 || !cpf.bytes().all(|b| b.is_ascii_digit()) {
        return bad();
    }
    let debts = s
        .data
        .lock()
        .unwrap()
        .customers
        .get(&cpf)
        .cloned()
        .unwrap_or_default();
    if debts.iter().all(|d| d.invoices.is_empty()) {
        return bad();
    }
    let offset = if s.data.lock().unwrap().ignore_offset {
        0
    } else {
        page.offset.unwrap_or(0)
    };
    let limit = page.limit.unwrap_or(50).max(1);
    let mut body = json!({"debts": page_of(&debts, offset, limit, &cpf)});
    let renames = s.data.lock().unwrap().renames.clone();
    rename(&mut body, &renames);
    axum::Json(body).into_response()
}

/// One answer of the debts list as docs/src/reference/services.md#nio-negocia-api pages it: `limit`
/// caps the **invoices** of the answer, summed over its debts, and `offset` counts invoices too.
/// The customer's invoices are taken in order (debt by debt); a debt whose invoices straddle two
/// answers appears in both, each time with its invoices of that answer. Past the end: no debt.
fn page_of(debts: &[SbDebt], offset: usize, limit: usize, cpf: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut skip = offset;
    let mut room = limit;
    for d in debts {
        if room == 0 {
            break;
        }
        let here = d.invoices.iter().skip(skip).take(room);
        let invoices: Vec<Value> = here.map(|i| invoice_json(i, cpf)).collect();
        skip = skip.saturating_sub(d.invoices.len());
        if invoices.is_empty() {
            continue;
        }
        room -= invoices.len();
        out.push(json!({
            "debtId": d.debt_id,
            "dealCode": format!("DC{}", d.debt_id),
            "productName": "NIO FIBRA 500MB",
            "origin": "nio",
            "status": "OPEN",
            "invoices": invoices,
        }));
    }
    out
}

fn rename(v: &mut Value, renames: &[(String, String)]) {
    match v {
        Value::Object(map) => {
            for (from, to) in renames {
                if let Some(x) = map.remove(from) {
                    map.insert(to.clone(), x);
                }
            }
            map.values_mut().for_each(|x| rename(x, renames));
        }
        Value::Array(items) => items.iter_mut().for_each(|x| rename(x, renames)),
        _ => {}
    }
}

fn invoice_json(i: &SbInvoice, cpf: &str) -> Value {
    let due = if i.dashed_date {
        i.due_date.format("%Y-%m-%d").to_string()
    } else {
        i.due_date.format("%Y%m%d").to_string()
    };
    // Reais as a JSON number, as the real API answers (e.g. 99.9).
    let amount: Value = serde_json::from_str(&format!(
        "{}.{:02}",
        i.amount_centavos / 100,
        i.amount_centavos % 100
    ))
    .unwrap_or(Value::Null);
    json!({
        "id": i.id,
        "amount": amount,
        "referenceMonth": i.due_date.format("%Y%m").to_string(),
        "dueDate": due,
        "expirationDate": due,
        "status": i.status,
        "barCode": i.barcode,
        "originalPixCode": i.pix_code,
        "pixCode": "",
        "cpfCnpj": cpf,
    })
}

async fn pdf(
    State(s): State<Arc<NioState>>,
    Path((_debt, invoice)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = s.faults.before(Route::NioPdf).await {
        return r;
    }
    if !s.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(inv) = s.find_invoice(&invoice) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let self_url = s.data.lock().unwrap().self_url.clone();
    let file_url = format!("{self_url}/nio/files/{}.pdf", inv.id);
    match inv.pdf {
        PdfKind::Direct => (
            [("content-type", "application/pdf")],
            super::pdf(&inv.id, 0),
        )
            .into_response(),
        PdfKind::Redirect => Redirect::temporary(&file_url).into_response(),
        PdfKind::JsonLink => axum::Json(json!({"url": file_url})).into_response(),
        PdfKind::NotPdf => (
            [("content-type", "application/pdf")],
            "<html><body>Sessão expirada</body></html>",
        )
            .into_response(),
    }
}

async fn file(Path(file): Path<String>) -> Response {
    let id = file.trim_end_matches(".pdf");
    ([("content-type", "application/pdf")], super::pdf(id, 0)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoices(n: usize) -> Vec<SbInvoice> {
        let due = NaiveDate::from_ymd_opt(2025, 1, 10).unwrap();
        (0..n)
            .map(|k| SbInvoice::new(&format!("{}", 1000 + k), due, 100))
            .collect()
    }

    /// `(debtId, [invoice ids])` of one answer.
    fn ids(page: &[Value]) -> Vec<(String, Vec<String>)> {
        page.iter()
            .map(|d| {
                (
                    d["debtId"].as_str().unwrap().to_string(),
                    d["invoices"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i["id"].as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn pages_count_invoices_summed_over_debts() {
        // 56 invoices in 3 debts (19, 19, 18): 50 at offset 0, the other 6 at offset 50.
        let debts = SbDebt::spread("D", invoices(56), 3);
        assert_eq!(
            debts.iter().map(|d| d.invoices.len()).collect::<Vec<_>>(),
            [19, 19, 18]
        );
        let first = ids(&page_of(&debts, 0, 50, "x"));
        assert_eq!(
            first
                .iter()
                .map(|(d, i)| (d.as_str(), i.len()))
                .collect::<Vec<_>>(),
            [("D-1", 19), ("D-2", 19), ("D-3", 12)]
        );
        let second = ids(&page_of(&debts, 50, 50, "x"));
        assert_eq!(
            second,
            [(
                "D-3".to_string(),
                (1050..1056).map(|n| n.to_string()).collect::<Vec<_>>()
            )]
        );
        assert!(page_of(&debts, 56, 50, "x").is_empty());
        // A small limit splits a debt over three answers.
        let third = ids(&page_of(&debts, 20, 10, "x"));
        assert_eq!(
            third,
            [(
                "D-2".to_string(),
                (1020..1030).map(|n| n.to_string()).collect::<Vec<_>>()
            )]
        );
    }
}
