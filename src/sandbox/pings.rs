//! A Healthchecks.io-style ping receiver: records each ping (path with query, body) under
//! `/ping/...`, for the tests of health pings.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::any;

/// Pings received, in order: (path and query, body).
#[derive(Default)]
pub struct PingsState {
    received: Mutex<Vec<(String, String)>>,
}

impl PingsState {
    pub fn received(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap().clone()
    }
}

pub fn routes(state: Arc<PingsState>) -> Router {
    Router::new()
        .route(
            "/ping/{*rest}",
            any(
                |State(s): State<Arc<PingsState>>, uri: Uri, body: Bytes| async move {
                    let path = uri
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    s.received
                        .lock()
                        .unwrap()
                        .push((path, String::from_utf8_lossy(&body).into_owned()));
                    "OK"
                },
            ),
        )
        .with_state(state)
}
