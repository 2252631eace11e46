//! The CRM's REST API (SERVICES.md §3): one request per queue item, classified by what the
//! caller does next; and the translation of ERP references into CRM ids (pure).

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
    pub body: Option<Value>,
    pub idempotency_key: String,
}

impl Request {
    /// `POST /clientes`, for logs (never the credentials).
    pub fn summary(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The id at `[crm] id_pointer`, if the answer has one.
    pub external_id: Option<String>,
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
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }
        let resp = builder.send().await.map_err(|e| CrmError::Transient {
            status: None,
            message: crate::http::describe_error(&e, "CRM"),
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp.bytes().await.map_err(|e| CrmError::Transient {
            status: Some(status.as_u16()),
            message: crate::http::describe_error(&e, "CRM"),
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
        match status {
            s if s.is_success() => Ok(Answer {
                status: s.as_u16(),
                external_id: json
                    .as_ref()
                    .and_then(|j| j.pointer(&self.id_pointer))
                    .and_then(|v| match v {
                        Value::String(s) if !s.is_empty() => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    }),
            }),
            StatusCode::NOT_FOUND if req.method == Method::DELETE => Ok(Answer {
                status: 404,
                external_id: None,
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CrmError::Stop(format!(
                "the CRM refused the credentials ({status}: {}): check `CRM_JOBS_CRM_ACCESS_TOKEN` and `CRM_JOBS_CRM_SECRET_ACCESS_TOKEN`; the run stopped and left the items untouched",
                message()
            ))),
            StatusCode::TOO_MANY_REQUESTS => Err(CrmError::RateLimited {
                retry_after: Duration::from_secs(retry_after.unwrap_or(1)),
            }),
            s if s.is_server_error() => Err(CrmError::Transient {
                status: Some(s.as_u16()),
                message: format!("the CRM answered {s}"),
            }),
            s => Err(CrmError::Permanent {
                status: s.as_u16(),
                message: format!("the CRM answered {}: {}", s.as_u16(), message()),
            }),
        }
    }
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
