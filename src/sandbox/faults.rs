//! Switchable faults shared by every sandbox service: latency (with jitter), queued error
//! answers, connection resets, faults *after* a write was committed, holds that keep requests
//! waiting until released, and counters that tests wait on instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

/// What a request is, for faults and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    NioParams,
    NioSession,
    NioDebts,
    NioPdf,
    /// The Canopus login page (GET and POST).
    CanopusLogin,
    /// Any other Canopus page.
    CanopusPage,
    /// The Canopus PDF (after the wrapper page).
    CanopusPdf,
    /// Any request to the CRM API.
    Crm,
    /// Any request to Stripe.
    Stripe,
}

/// One fault, applied to the next request of its route.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer this status (with `Retry-After` seconds when given).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Start the answer, then drop the connection.
    Reset,
    /// Answer this status (with `Retry-After` seconds when given) only `after_ms` later than
    /// the request would otherwise be answered.
    Late {
        status: u16,
        retry_after: Option<u64>,
        after_ms: u64,
    },
}

#[derive(Default)]
struct Inner {
    queued: HashMap<Route, VecDeque<Fault>>,
    latency_ms: u64,
    jitter_ms: u64,
    /// Fraction (0..1) of requests that fail with 503 at random.
    error_rate: f64,
    /// Fraction (0..1) of requests whose connection is reset, at random.
    reset_rate: f64,
    held: HashMap<Route, bool>,
    /// Hold requests of a route once this many have passed.
    hold_after: HashMap<Route, u64>,
    seen: HashMap<Route, u64>,
    in_flight: HashMap<Route, u64>,
    /// Statuses answered to the next writes of a route after they were committed.
    after_commit: HashMap<Route, VecDeque<u16>>,
    /// Fraction (0..1) of writes answered with 503 after they were committed, at random.
    after_commit_rate: f64,
    /// Writes committed and then answered with an error.
    faulted_after_commit: HashMap<Route, u64>,
}

/// The fault switchboard.
#[derive(Default)]
pub struct Faults {
    inner: Mutex<Inner>,
    changed: Condvar,
    released: tokio::sync::Notify,
}

impl Faults {
    /// Queues `fault` for the next `times` requests of `route`.
    pub fn push(&self, route: Route, fault: Fault, times: usize) {
        let mut inner = self.inner.lock().unwrap();
        let q = inner.queued.entry(route).or_default();
        for _ in 0..times {
            q.push_back(fault.clone());
        }
    }

    /// Latency added to every request, plus up to `jitter_ms` at random.
    pub fn set_latency(&self, latency_ms: u64, jitter_ms: u64) {
        let mut inner = self.inner.lock().unwrap();
        inner.latency_ms = latency_ms;
        inner.jitter_ms = jitter_ms;
    }

    /// Fails this fraction of requests with 503, at random.
    pub fn set_error_rate(&self, rate: f64) {
        self.inner.lock().unwrap().error_rate = rate;
    }

    /// Resets the connection of this fraction of requests, at random (after the 503s drawn by
    /// [`Faults::set_error_rate`]).
    pub fn set_reset_rate(&self, rate: f64) {
        self.inner.lock().unwrap().reset_rate = rate;
    }

    /// Answers the next `times` writes of `route` with `status` *after* committing them: the
    /// change is made, the client is told it failed.
    pub fn push_after_commit(&self, route: Route, status: u16, times: usize) {
        let mut inner = self.inner.lock().unwrap();
        let q = inner.after_commit.entry(route).or_default();
        q.extend(std::iter::repeat_n(status, times));
    }

    /// Answers this fraction of writes with 503 after committing them, at random.
    pub fn set_after_commit_rate(&self, rate: f64) {
        self.inner.lock().unwrap().after_commit_rate = rate;
    }

    /// Writes of `route` committed and then answered with an error, so far.
    pub fn faulted_after_commit(&self, route: Route) -> u64 {
        *self
            .inner
            .lock()
            .unwrap()
            .faulted_after_commit
            .get(&route)
            .unwrap_or(&0)
    }

    /// Called by a handler once its write is committed: the error answer that replaces the
    /// success, if a fault applies.
    pub fn after_commit(&self, route: Route) -> Option<Response> {
        let mut inner = self.inner.lock().unwrap();
        let mut status = inner
            .after_commit
            .get_mut(&route)
            .and_then(VecDeque::pop_front);
        if status.is_none()
            && inner.after_commit_rate > 0.0
            && fastrand::f64() < inner.after_commit_rate
        {
            status = Some(503);
        }
        let status = status?;
        *inner.faulted_after_commit.entry(route).or_default() += 1;
        Some(answer(Fault::Status {
            status,
            retry_after: None,
        }))
    }

    /// Keeps requests of `route` waiting (after they are counted) until [`Faults::release_all`].
    pub fn hold(&self, route: Route) {
        self.inner.lock().unwrap().held.insert(route, true);
    }

    /// Lets `n` requests of `route` through, then holds the next ones.
    pub fn hold_after(&self, route: Route, n: u64) {
        let mut inner = self.inner.lock().unwrap();
        let seen = *inner.seen.get(&route).unwrap_or(&0);
        inner.hold_after.insert(route, seen + n);
    }

    /// Lets every held request go on.
    pub fn release_all(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.held.clear();
        inner.hold_after.clear();
        drop(inner);
        self.released.notify_waiters();
    }

    /// Requests of `route` received so far.
    pub fn seen(&self, route: Route) -> u64 {
        *self.inner.lock().unwrap().seen.get(&route).unwrap_or(&0)
    }

    /// Blocks until `n` requests of `route` have arrived (at most `timeout`); returns the count.
    pub fn wait_seen(&self, route: Route, n: u64, timeout: Duration) -> u64 {
        let inner = self.inner.lock().unwrap();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| *i.seen.get(&route).unwrap_or(&0) < n)
            .unwrap();
        *inner.seen.get(&route).unwrap_or(&0)
    }

    /// Blocks until `n` requests of `route` are waiting in a hold.
    pub fn wait_held(&self, route: Route, n: u64, timeout: Duration) -> u64 {
        let inner = self.inner.lock().unwrap();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| {
                *i.in_flight.get(&route).unwrap_or(&0) < n
            })
            .unwrap();
        *inner.in_flight.get(&route).unwrap_or(&0)
    }

    /// Called first by every handler: counts the request, waits out latency and holds, and
    /// returns the fault's answer if one applies.
    pub async fn before(&self, route: Route) -> Option<Response> {
        let (delay, fault, held) = {
            let mut inner = self.inner.lock().unwrap();
            *inner.seen.entry(route).or_default() += 1;
            let jitter = if inner.jitter_ms > 0 {
                fastrand::u64(0..=inner.jitter_ms)
            } else {
                0
            };
            let delay = inner.latency_ms + jitter;
            let mut fault = inner.queued.get_mut(&route).and_then(VecDeque::pop_front);
            if fault.is_none() && inner.error_rate > 0.0 && fastrand::f64() < inner.error_rate {
                fault = Some(Fault::Status {
                    status: 503,
                    retry_after: None,
                });
            }
            if fault.is_none() && inner.reset_rate > 0.0 && fastrand::f64() < inner.reset_rate {
                fault = Some(Fault::Reset);
            }
            let seen = *inner.seen.get(&route).unwrap_or(&0);
            if inner.hold_after.get(&route).is_some_and(|n| seen > *n) {
                inner.held.insert(route, true);
            }
            let held = *inner.held.get(&route).unwrap_or(&false);
            if held {
                *inner.in_flight.entry(route).or_default() += 1;
            }
            (delay, fault, held)
        };
        self.changed.notify_all();
        if held {
            loop {
                let notified = self.released.notified();
                if !*self
                    .inner
                    .lock()
                    .unwrap()
                    .held
                    .get(&route)
                    .unwrap_or(&false)
                {
                    break;
                }
                notified.await;
            }
            let mut inner = self.inner.lock().unwrap();
            *inner.in_flight.entry(route).or_default() -= 1;
        }
        let late = match fault {
            Some(Fault::Late { after_ms, .. }) => after_ms,
            _ => 0,
        };
        if delay + late > 0 {
            tokio::time::sleep(Duration::from_millis(delay + late)).await;
        }
        fault.map(answer)
    }
}

fn answer(fault: Fault) -> Response {
    match fault {
        Fault::Status {
            status,
            retry_after,
        }
        | Fault::Late {
            status,
            retry_after,
            ..
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = (
                status,
                Json(serde_json::json!({"error": status.canonical_reason().unwrap_or("error")})),
            )
                .into_response();
            if let Some(s) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", s.to_string().parse().expect("digits"));
            }
            resp
        }
        Fault::Reset => {
            let stream = futures_util::stream::iter(vec![
                Ok(axum::body::Bytes::from_static(b"{\"debts\": [")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "sandbox reset",
                )),
            ]);
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-length", "4096")
                .body(Body::from_stream(stream))
                .expect("valid response")
        }
    }
}

#[derive(Deserialize)]
struct FaultRequest {
    route: Route,
    fault: Fault,
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
struct LatencyRequest {
    latency_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
}

/// `POST /_sandbox/fault` `{"route": "nio_debts", "fault": {"status": {"status": 503}}, "times": 2}`,
/// `POST /_sandbox/latency` `{"latency_ms": 50}`, `GET /_sandbox/stats`.
pub fn routes(faults: Arc<Faults>) -> Router {
    Router::new()
        .route(
            "/_sandbox/fault",
            post(
                |State(f): State<Arc<Faults>>, Json(r): Json<FaultRequest>| async move {
                    f.push(r.route, r.fault, r.times);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_sandbox/latency",
            post(
                |State(f): State<Arc<Faults>>, Json(r): Json<LatencyRequest>| async move {
                    f.set_latency(r.latency_ms, r.jitter_ms);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_sandbox/stats",
            get(|State(f): State<Arc<Faults>>| async move {
                let inner = f.inner.lock().unwrap();
                let seen: HashMap<String, u64> = inner
                    .seen
                    .iter()
                    .map(|(k, v)| {
                        let name = serde_json::to_value(k)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from));
                        (name.unwrap_or_default(), *v)
                    })
                    .collect();
                Json(serde_json::json!({ "requests": seen }))
            }),
        )
        .with_state(faults)
}
