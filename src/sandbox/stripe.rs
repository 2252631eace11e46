//! The sandbox's Stripe: `GET /v1/subscriptions/{id}` in the real shape of both API versions
//! (the real fixtures, with the id, status and period put in), its error shapes (`401`,
//! `404 resource_missing`) and faults (`429` through the fault switchboard).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

use super::faults::{Faults, Route};

/// The secret key the sandbox accepts.
pub const SECRET_KEY: &str = "sk_test_sandbox";

#[derive(Debug, Clone)]
struct Sub {
    status: String,
    start: i64,
    end: i64,
}

/// The state of the fake Stripe.
pub struct StripeState {
    subs: Mutex<HashMap<String, Sub>>,
    /// The path and query of every request under `/stripe/`, as received (still encoded).
    requests: Mutex<Vec<String>>,
    faults: Arc<Faults>,
}

impl StripeState {
    pub fn new(faults: Arc<Faults>) -> StripeState {
        StripeState {
            subs: Mutex::default(),
            requests: Mutex::default(),
            faults,
        }
    }

    /// Sets a subscription's status and current period (Unix seconds).
    pub fn set(&self, id: &str, status: &str, start: i64, end: i64) {
        self.subs.lock().unwrap().insert(
            id.to_string(),
            Sub {
                status: status.to_string(),
                start,
                end,
            },
        );
    }

    /// The path and query of every request received so far, as sent (percent-encoded).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn record(&self, uri: &Uri) {
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        self.requests.lock().unwrap().push(target.to_string());
    }
}

pub fn routes(state: Arc<StripeState>) -> Router {
    Router::new()
        .route("/stripe/v1/subscriptions/{id}", get(subscription))
        .route("/stripe/{*rest}", any(elsewhere))
        .with_state(state)
}

/// Any other endpoint: recorded (a client must never get here), answered as Stripe does.
async fn elsewhere(State(s): State<Arc<StripeState>>, uri: Uri) -> Response {
    s.record(&uri);
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "",
        "Unrecognized request URL",
    )
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": kind, "code": code, "message": message}})),
    )
        .into_response()
}

async fn subscription(
    State(s): State<Arc<StripeState>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.record(&uri);
    if let Some(r) = s.faults.before(Route::Stripe).await {
        return r;
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {SECRET_KEY}")) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "",
            "Invalid API Key provided: sk_test_****",
        );
    }
    let Some(sub) = s.subs.lock().unwrap().get(&id).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            &format!("No such subscription: '{id}'"),
        );
    };
    let version = headers
        .get("stripe-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("2024-06-20");
    // Since 2025-03-31 the period lives on each item; before, on the subscription.
    let mut body: Value = if version >= "2025-03-31" {
        let mut v: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/stripe/subscription_basil.json"
        ))
        .expect("fixture");
        if let Some(items) = v.pointer_mut("/items/data").and_then(Value::as_array_mut) {
            for item in items {
                item["current_period_start"] = json!(sub.start);
                item["current_period_end"] = json!(sub.end);
            }
        }
        v
    } else {
        let mut v: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/stripe/subscription_legacy.json"
        ))
        .expect("fixture");
        v["current_period_start"] = json!(sub.start);
        v["current_period_end"] = json!(sub.end);
        v
    };
    body["id"] = json!(id);
    body["status"] = json!(sub.status);
    body["cancel_at_period_end"] = json!(false);
    axum::Json(body).into_response()
}
