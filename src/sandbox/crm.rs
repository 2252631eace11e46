//! The sandbox's CRM REST API (docs/src/reference/services.md#the-crm): the two credential headers,
//! the four resources, the answer envelope, validation errors with the CRM's message, references
//! that must be CRM ids (a venda's and an orçamento's client and products), lists with their
//! filters and pages, idempotency keys (switchable off), faults after a write is committed (see
//! `faults`), and a global limit per window answering `429` with `Retry-After`. It counts what a
//! test needs: records created per idempotency key.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::faults::{Faults, Route};

/// The credentials the sandbox accepts.
pub const ACCESS_TOKEN: &str = "sandbox-access-token";
pub const SECRET_TOKEN: &str = "sandbox-secret-token";

const RESOURCES: &[&str] = &["clientes", "produtos", "vendas", "orcamentos"];

/// Records per page of a list.
const PAGE: usize = 20;

/// The filters each list takes; `nome` matches a part of the name, the others the whole value
/// (`cpf_cnpj` by its digits, with or without punctuation).
fn filters(resource: &str) -> &'static [&'static str] {
    match resource {
        "clientes" => &["nome", "cpf_cnpj", "email"],
        "produtos" => &["nome", "codigo_barras", "codigo_interno"],
        _ => &["cliente_id", "codigo"],
    }
}

#[derive(Default)]
struct Data {
    records: HashMap<String, HashMap<String, Value>>,
    next_id: u64,
    idempotency: bool,
    answers: HashMap<String, (u16, Value)>,
    /// Records created under each idempotency key, per resource (more than one is a duplicate).
    created_by_key: HashMap<(String, String), u32>,
    limit: Option<(usize, Duration)>,
    window: VecDeque<Instant>,
    rejected_429: u64,
}

/// The state of the fake CRM.
pub struct CrmState {
    data: Mutex<Data>,
    faults: Arc<Faults>,
}

impl CrmState {
    pub fn new(faults: Arc<Faults>) -> CrmState {
        CrmState {
            data: Mutex::new(Data {
                idempotency: true,
                next_id: 1000,
                ..Data::default()
            }),
            faults,
        }
    }

    /// Honours `Idempotency-Key` (the default) or not.
    pub fn set_idempotency(&self, on: bool) {
        self.data.lock().unwrap().idempotency = on;
    }

    /// At most `n` requests per `window`, globally; more answer `429` with `Retry-After`.
    pub fn set_limit(&self, n: usize, window: Duration) {
        let mut d = self.data.lock().unwrap();
        d.limit = Some((n, window));
        d.window.clear();
    }

    /// How many requests were refused with `429`.
    pub fn rejected_429(&self) -> u64 {
        self.data.lock().unwrap().rejected_429
    }

    /// Records of a resource.
    pub fn records(&self, resource: &str) -> Vec<(String, Value)> {
        let d = self.data.lock().unwrap();
        let mut v: Vec<(String, Value)> = d
            .records
            .get(resource)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Idempotency keys under which more than one record was created.
    pub fn duplicates(&self) -> usize {
        self.data
            .lock()
            .unwrap()
            .created_by_key
            .values()
            .filter(|n| **n > 1)
            .count()
    }

    /// Idempotency keys under which more than one record of `resource` was created, sorted.
    pub fn duplicate_keys(&self, resource: &str) -> Vec<String> {
        let d = self.data.lock().unwrap();
        let mut keys: Vec<String> = d
            .created_by_key
            .iter()
            .filter(|((r, _), n)| r == resource && **n > 1)
            .map(|((_, k), _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Requests that carried each idempotency key, in total (creates only).
    pub fn creates(&self) -> u32 {
        self.data.lock().unwrap().created_by_key.values().sum()
    }
}

pub fn routes(state: Arc<CrmState>) -> Router {
    Router::new()
        .route("/crm/{resource}", post(create).get(list))
        .route("/crm/{resource}/{id}", get(read).put(update).delete(remove))
        .with_state(state)
}

fn envelope(status: StatusCode, data: Value) -> Response {
    let ok = status.is_success();
    (
        status,
        axum::Json(json!({"code": status.as_u16(), "status": if ok { "success" } else { "error" }, "data": data})),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    envelope(status, json!({"mensagem": message}))
}

/// Faults, credentials and the rate limit, for every request.
async fn gate(s: &CrmState, headers: &HeaderMap, resource: &str) -> Option<Response> {
    if let Some(r) = s.faults.before(Route::Crm).await {
        return Some(r);
    }
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if h("access-token") != Some(ACCESS_TOKEN) || h("secret-access-token") != Some(SECRET_TOKEN) {
        return Some(error(StatusCode::UNAUTHORIZED, "Token de acesso inválido"));
    }
    if !RESOURCES.contains(&resource) {
        return Some(error(StatusCode::NOT_FOUND, "Recurso não encontrado"));
    }
    let mut d = s.data.lock().unwrap();
    if let Some((n, window)) = d.limit {
        let now = Instant::now();
        while d
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            d.window.pop_front();
        }
        if d.window.len() >= n {
            d.rejected_429 += 1;
            let wait = window.saturating_sub(now.duration_since(d.window[0]));
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Limite de requisições excedido",
            );
            r.headers_mut().insert(
                "retry-after",
                wait.as_millis()
                    .div_ceil(1000)
                    .max(1)
                    .to_string()
                    .parse()
                    .expect("digits"),
            );
            return Some(r);
        }
        d.window.push_back(now);
    }
    None
}

/// Checks the CRM's own rules: names, and references that must be CRM ids.
fn validate(d: &Data, resource: &str, body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("O corpo da requisição deve ser um objeto JSON".into());
    };
    if matches!(resource, "clientes" | "produtos")
        && obj
            .get("nome")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Err("O campo nome é obrigatório".into());
    }
    let exists = |r: &str, id: &Value| {
        id.as_str()
            .is_some_and(|i| d.records.get(r).is_some_and(|m| m.contains_key(i)))
    };
    if matches!(resource, "vendas" | "orcamentos") {
        // A venda must name its client; an orçamento may leave it out, but not name one that
        // is not a CRM id.
        match obj.get("cliente_id") {
            Some(id) if exists("clientes", id) => {}
            None if resource == "orcamentos" => {}
            Some(Value::String(id)) => return Err(format!("Cliente {id} não encontrado.")),
            Some(id @ Value::Number(_)) => return Err(format!("Cliente {id} não encontrado.")),
            _ => return Err("Cliente não encontrado.".into()),
        }
        if let Some(items) = obj.get("produtos").and_then(Value::as_array) {
            for item in items {
                let id = item.pointer("/produto/id").cloned().unwrap_or(Value::Null);
                if !exists("produtos", &id) {
                    return Err(format!("Produto {} não encontrado", id));
                }
            }
        }
    }
    Ok(())
}

async fn create(
    State(s): State<Arc<CrmState>>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&s, &headers, &resource).await {
        return r;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut d = s.data.lock().unwrap();
    if d.idempotency
        && let Some((status, data)) = key.as_ref().and_then(|k| d.answers.get(k)).cloned()
    {
        return envelope(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), data);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "JSON inválido");
    };
    if let Err(m) = validate(&d, &resource, &body) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &m);
    }
    d.next_id += 1;
    let id = d.next_id.to_string();
    let mut record = body;
    record["id"] = Value::String(id.clone());
    d.records
        .entry(resource.clone())
        .or_default()
        .insert(id, record.clone());
    if let Some(k) = key {
        *d.created_by_key.entry((resource, k.clone())).or_default() += 1;
        d.answers.insert(k, (200, record.clone()));
    }
    drop(d);
    if let Some(r) = s.faults.after_commit(Route::Crm) {
        return r;
    }
    envelope(StatusCode::OK, record)
}

async fn read(
    State(s): State<Arc<CrmState>>,
    Path((resource, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers, &resource).await {
        return r;
    }
    let d = s.data.lock().unwrap();
    match d.records.get(&resource).and_then(|m| m.get(&id)) {
        Some(r) => envelope(StatusCode::OK, r.clone()),
        None => error(StatusCode::NOT_FOUND, "Registro não encontrado"),
    }
}

async fn update(
    State(s): State<Arc<CrmState>>,
    Path((resource, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&s, &headers, &resource).await {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "JSON inválido");
    };
    let mut d = s.data.lock().unwrap();
    if let Err(m) = validate(&d, &resource, &body) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &m);
    }
    match d.records.get_mut(&resource).and_then(|m| m.get_mut(&id)) {
        Some(r) => {
            let mut record = body;
            record["id"] = Value::String(id);
            *r = record.clone();
            drop(d);
            if let Some(r) = s.faults.after_commit(Route::Crm) {
                return r;
            }
            envelope(StatusCode::OK, record)
        }
        None => error(StatusCode::NOT_FOUND, "Registro não encontrado"),
    }
}

async fn remove(
    State(s): State<Arc<CrmState>>,
    Path((resource, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers, &resource).await {
        return r;
    }
    let mut d = s.data.lock().unwrap();
    match d.records.get_mut(&resource).and_then(|m| m.remove(&id)) {
        Some(_) => {
            drop(d);
            if let Some(r) = s.faults.after_commit(Route::Crm) {
                return r;
            }
            envelope(StatusCode::OK, json!({"id": id}))
        }
        None => error(StatusCode::NOT_FOUND, "Registro não encontrado"),
    }
}

/// Digits of a value, for comparing CPFs and CNPJs written with or without punctuation.
fn digits(v: &str) -> String {
    v.chars().filter(char::is_ascii_digit).collect()
}

/// `GET /{resource}?pagina=N&filter=value...`: 20 records a page, by id, with `meta`.
async fn list(
    State(s): State<Arc<CrmState>>,
    Path(resource): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers, &resource).await {
        return r;
    }
    let page = match query.get("pagina").map(|p| p.parse::<usize>()) {
        None => 1,
        Some(Ok(p)) if p >= 1 => p,
        Some(_) => return error(StatusCode::BAD_REQUEST, "Página inválida"),
    };
    let allowed = filters(&resource);
    let mut wanted = Vec::new();
    for (k, v) in &query {
        if k == "pagina" {
            continue;
        }
        if !allowed.contains(&k.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("Filtro {k} não suportado"),
            );
        }
        wanted.push((k.as_str(), v.as_str()));
    }
    let d = s.data.lock().unwrap();
    let mut found: Vec<&Value> = d
        .records
        .get(&resource)
        .map(|m| m.values().collect())
        .unwrap_or_default();
    found.retain(|r| {
        wanted.iter().all(|(k, v)| {
            let field = match r.get(*k) {
                Some(Value::String(f)) => f.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return false,
            };
            match *k {
                "nome" => field.to_lowercase().contains(&v.to_lowercase()),
                "cpf_cnpj" => !digits(v).is_empty() && digits(&field) == digits(v),
                _ => field == *v,
            }
        })
    });
    let id = |r: &Value| {
        r["id"]
            .as_str()
            .and_then(|i| i.parse::<u64>().ok())
            .unwrap_or(0)
    };
    found.sort_by_key(|r| id(r));
    let total = found.len();
    let pages = total.div_ceil(PAGE).max(1);
    let data: Vec<Value> = found
        .into_iter()
        .skip((page - 1) * PAGE)
        .take(PAGE)
        .cloned()
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({
            "code": 200,
            "status": "success",
            "meta": {
                "total_registros": total,
                "total_paginas": pages,
                "total_registros_pagina": data.len(),
                "pagina_atual": page,
                "limite_por_pagina": PAGE,
            },
            "data": data,
        })),
    )
        .into_response()
}
