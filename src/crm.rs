//! The CRM's REST API (docs/src/reference/services.md#the-crm): one request per queue item,
//! classified by what the caller does next; and, pure, what shapes the requests: the translation of
//! ERP references into CRM ids, the lookup of a record by its natural key, the folding of two
//! changes of a record into one payload, and the entity names the ERP uses.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::CrmConfig;

/// How a request failed, by what the caller does.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// Credentials refused: stop the run, leave the items untouched.
    #[error("{0}")]
    Stop(String),
    /// `429`: slow down; not the item's fault.
    #[error("the CRM answered 429 Too Many Requests")]
    RateLimited { retry_after: Duration },
    /// `5xx`, timeouts, resets: try again later.
    #[error("{message}")]
    Transient {
        status: Option<u16>,
        message: String,
        /// The request may have reached the CRM and been applied (anything but a failure to
        /// connect): for a create, its outcome is unknown.
        maybe_applied: bool,
    },
    /// `400`/`422` and other client errors: the item fails with the CRM's message.
    #[error("{message}")]
    Permanent { status: u16, message: String },
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// Query parameters (a list's filters).
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub idempotency_key: String,
}

impl Request {
    /// `POST /clientes`, `GET /clientes?cpf_cnpj=…`, for logs: never the credentials, nor the
    /// values of a filter (a CPF).
    pub fn summary(&self) -> String {
        let mut s = format!("{} {}", self.method, self.path);
        for (i, (k, _)) in self.query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            s.push_str("=…");
        }
        s
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The id at `[crm] id_pointer`, if the answer has one.
    pub external_id: Option<String>,
    /// The whole answer, for a `GET` (a list).
    pub body: Option<Value>,
}

/// The client.
pub struct CrmClient {
    http: reqwest::Client,
    base: String,
    access: (HeaderName, HeaderValue),
    secret: (HeaderName, HeaderValue),
    id_pointer: String,
    message_pointer: String,
}

impl CrmClient {
    pub fn new(
        cfg: &CrmConfig,
        base: &str,
        access: &str,
        secret: &str,
    ) -> anyhow::Result<CrmClient> {
        let header = |name: &str, value: &str| -> anyhow::Result<(HeaderName, HeaderValue)> {
            let mut v = HeaderValue::from_str(value).map_err(|_| {
                anyhow::anyhow!("a CRM credential holds characters not allowed in a header")
            })?;
            v.set_sensitive(true);
            Ok((HeaderName::from_bytes(name.as_bytes())?, v))
        };
        Ok(CrmClient {
            http: crate::http::builder()
                .user_agent(concat!("crm-jobs/", env!("CARGO_PKG_VERSION")))
                .timeout(Duration::from_secs(cfg.timeout_secs))
                .connect_timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(cfg.concurrency as usize)
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            access: header(&cfg.access_token_header, access)?,
            secret: header(&cfg.secret_token_header, secret)?,
            id_pointer: cfg.id_pointer.clone(),
            message_pointer: cfg.message_pointer.clone(),
        })
    }

    /// Sends one request and classifies the answer.
    pub async fn send(&self, req: &Request) -> Result<Answer, CrmError> {
        let mut builder = self
            .http
            .request(req.method.clone(), format!("{}{}", self.base, req.path))
            .header(self.access.0.clone(), self.access.1.clone())
            .header(self.secret.0.clone(), self.secret.1.clone())
            .header("Idempotency-Key", &req.idempotency_key);
        if !req.query.is_empty() {
            builder = builder.query(&req.query);
        }
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }
        let resp = builder.send().await.map_err(|e| CrmError::Transient {
            status: None,
            message: crate::http::describe_error(&e, "CRM"),
            // Not connected: the request never left.
            maybe_applied: !e.is_connect(),
        })?;
        let status = resp.status();
        let retry_after = crate::retry::retry_after(resp.headers());
        let body = resp.bytes().await.map_err(|e| CrmError::Transient {
            status: Some(status.as_u16()),
            message: crate::http::describe_error(&e, "CRM"),
            maybe_applied: true,
        })?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let message = || {
            json.as_ref()
                .and_then(|j| j.pointer(&self.message_pointer))
                .map(|m| {
                    m.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| m.to_string())
                })
                .unwrap_or_else(|| format!("the CRM answered {status}"))
        };
        use crate::retry::Verdict;
        match (status, crate::retry::classify(status)) {
            (s, Verdict::Done) => Ok(Answer {
                status: s.as_u16(),
                external_id: json
                    .as_ref()
                    .and_then(|j| j.pointer(&self.id_pointer))
                    .and_then(id_text),
                body: if req.method == Method::GET {
                    json.clone()
                } else {
                    None
                },
            }),
            (StatusCode::NOT_FOUND, _) if req.method == Method::DELETE => Ok(Answer {
                status: 404,
                external_id: None,
                body: None,
            }),
            (_, Verdict::Refused) => Err(CrmError::Stop(format!(
                "the CRM refused the credentials ({status}: {}): check `CRM_JOBS_CRM_ACCESS_TOKEN` and `CRM_JOBS_CRM_SECRET_ACCESS_TOKEN`; the run stopped and left the items untouched",
                message()
            ))),
            (_, Verdict::TooMany) => Err(CrmError::RateLimited {
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            }),
            (s, Verdict::Transient) => Err(CrmError::Transient {
                status: Some(s.as_u16()),
                message: format!("the CRM answered {s}"),
                // A server may fail after it committed the change.
                maybe_applied: true,
            }),
            (s, Verdict::Permanent) => Err(CrmError::Permanent {
                status: s.as_u16(),
                message: format!("the CRM answered {}: {}", s.as_u16(), message()),
            }),
        }
    }
}

/// An id as text: a non-empty string, or a number.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The entity of `[crm.resources]` that `name` stands for: itself, or the entity it is the
/// singular of (`cliente`, `produto`, `venda`, `atividade`: the ERP's own queue table names
/// entities in the singular).
pub fn canonical_entity<'a>(
    name: &str,
    resources: &'a std::collections::BTreeMap<String, String>,
) -> Option<&'a str> {
    [name.to_string(), format!("{name}s"), format!("{name}es")]
        .iter()
        .find_map(|n| resources.get_key_value(n).map(|(k, _)| k.as_str()))
}

/// How a record is found at the CRM by a value of its own (a client's CPF or CNPJ, a
/// product's barcode): where the value is in the payload, and the list filter that asks for it.
#[derive(Debug, Clone)]
pub struct NaturalKey {
    pub pointer: String,
    pub filter: String,
}

impl NaturalKey {
    /// Parses `"/cpf_cnpj=cpf_cnpj"`.
    pub fn parse(text: &str) -> Option<NaturalKey> {
        let (pointer, filter) = text.split_once('=')?;
        (pointer.starts_with('/') && !filter.is_empty()).then(|| NaturalKey {
            pointer: pointer.to_string(),
            filter: filter.to_string(),
        })
    }

    /// The payload's value of the key, as text; `None` when it has none.
    pub fn value(&self, payload: &Value) -> Option<String> {
        payload
            .pointer(&self.pointer)
            .and_then(id_text)
            .filter(|v| !comparable(v).is_empty())
    }

    /// The CRM ids of the records of a list answer whose key is `value` (compared by letters
    /// and digits only: `708.990.571-36` is `70899057136`).
    pub fn matches(
        &self,
        answer: &Value,
        list_pointer: &str,
        id_pointer: &str,
        value: &str,
    ) -> Vec<String> {
        let wanted = comparable(value);
        answer
            .pointer(list_pointer)
            .and_then(Value::as_array)
            .map(|records| {
                records
                    .iter()
                    .filter(|r| {
                        r.pointer(&self.pointer)
                            .and_then(id_text)
                            .is_some_and(|v| comparable(&v) == wanted)
                    })
                    .filter_map(|r| r.pointer(id_pointer).and_then(id_text))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn comparable(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A reference of an entity's payload: where (a JSON pointer, `*` for every element of a list)
/// and to which entity's records it points.
#[derive(Debug, Clone)]
pub struct Reference {
    pub pointer: Vec<String>,
    pub entity: String,
}

impl Reference {
    /// Parses `"/produtos/*/produto/id=produtos"`.
    pub fn parse(text: &str) -> Option<Reference> {
        let (pointer, entity) = text.split_once('=')?;
        Some(Reference {
            pointer: pointer
                .trim_start_matches('/')
                .split('/')
                .map(|p| p.replace("~1", "/").replace("~0", "~"))
                .collect(),
            entity: entity.to_string(),
        })
    }
}

/// Replaces every ERP id found at the references by its CRM id (as a string). Returns the
/// first reference without a CRM id as `(entity, ERP id)`, leaving the payload half-done (the
/// caller drops it).
pub fn translate(
    payload: &mut Value,
    references: &[Reference],
    mut lookup: impl FnMut(&str, &str) -> Option<String>,
) -> Result<(), (String, String)> {
    for r in references {
        let mut missing = None;
        visit(payload, &r.pointer, &mut |v| {
            let erp = match v {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return,
            };
            match lookup(&r.entity, &erp) {
                Some(crm) => *v = Value::String(crm),
                None => {
                    if missing.is_none() {
                        missing = Some((r.entity.clone(), erp));
                    }
                }
            }
        });
        if let Some(m) = missing {
            return Err(m);
        }
    }
    Ok(())
}

fn visit(v: &mut Value, path: &[String], f: &mut dyn FnMut(&mut Value)) {
    let Some((head, rest)) = path.split_first() else {
        f(v);
        return;
    };
    match (head.as_str(), v) {
        ("*", Value::Array(items)) => items.iter_mut().for_each(|i| visit(i, rest, f)),
        (key, Value::Object(map)) => {
            if let Some(next) = map.get_mut(key) {
                visit(next, rest, f);
            }
        }
        (index, Value::Array(items)) => {
            if let Some(next) = index.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                visit(next, rest, f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn singular_names_stand_for_their_entity() {
        let resources: std::collections::BTreeMap<String, String> = CrmConfig::default().resources;
        for (name, entity) in [
            ("cliente", Some("clientes")),
            ("clientes", Some("clientes")),
            ("produto", Some("produtos")),
            ("venda", Some("vendas")),
            ("atividade", Some("atividades")),
            ("fornecedor", None),
        ] {
            assert_eq!(canonical_entity(name, &resources), entity, "{name}");
        }
    }

    #[test]
    fn a_record_is_found_by_its_natural_key() {
        let key = NaturalKey::parse("/cpf_cnpj=cpf_cnpj").unwrap();
        assert_eq!(
            key.value(&json!({"cpf_cnpj": "708.990.571-36"})).as_deref(),
            Some("708.990.571-36")
        );
        assert_eq!(key.value(&json!({"cpf_cnpj": " - "})), None);
        assert_eq!(key.value(&json!({"nome": "x"})), None);
        let answer = json!({"code": 200, "data": [
            {"id": "1001", "cpf_cnpj": "70899057136"},
            {"id": 1002, "cpf_cnpj": "52395243000"},
            {"id": "1003"}
        ]});
        assert_eq!(
            key.matches(&answer, "/data", "/id", "708.990.571-36"),
            vec!["1001"]
        );
        assert_eq!(
            key.matches(&answer, "/data", "/id", "523.952.430-00"),
            vec!["1002"]
        );
        assert!(key.matches(&answer, "/data", "/id", "1").is_empty());
        assert!(key.matches(&json!({}), "/data", "/id", "1").is_empty());
        let get = Request {
            method: Method::GET,
            path: "/clientes".into(),
            query: vec![("cpf_cnpj".into(), "70899057136".into())],
            body: None,
            idempotency_key: "k".into(),
        };
        assert_eq!(get.summary(), "GET /clientes?cpf_cnpj=…");
    }

    #[test]
    fn references_are_translated_or_reported() {
        let refs: Vec<Reference> = ["/cliente_id=clientes", "/produtos/*/produto/id=produtos"]
            .iter()
            .map(|r| Reference::parse(r).unwrap())
            .collect();
        let mut venda = json!({"cliente_id": 7, "produtos": [{"produto": {"id": "10"}}, {"produto": {"id": "11"}}]});
        let known = |e: &str, id: &str| match (e, id) {
            ("clientes", "7") => Some("C-70".to_string()),
            ("produtos", "10") => Some("P-100".to_string()),
            ("produtos", "11") => Some("P-110".to_string()),
            _ => None,
        };
        translate(&mut venda, &refs, known).unwrap();
        assert_eq!(
            venda,
            json!({"cliente_id": "C-70", "produtos": [{"produto": {"id": "P-100"}}, {"produto": {"id": "P-110"}}]})
        );

        let mut other = json!({"cliente_id": "8", "produtos": []});
        assert_eq!(
            translate(&mut other, &refs, known),
            Err(("clientes".to_string(), "8".to_string()))
        );
        let mut partial = json!({"cliente_id": "7", "produtos": [{"produto": {"id": "12"}}]});
        assert_eq!(
            translate(&mut partial, &refs, known),
            Err(("produtos".to_string(), "12".to_string()))
        );
    }
}
