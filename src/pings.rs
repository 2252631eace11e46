//! Health pings, Healthchecks.io style: per job, `[pings] <job> = "https://hc-ping.com/<uuid>"`.
//! A run pings `<url>/start?rid=<run id>` when it starts, then `<url>?rid=` on success, or
//! `<url>/<exit code>?rid=` otherwise, with its one-line summary as the body. A ping that fails
//! is logged and never fails the job.

use std::collections::BTreeMap;
use std::time::Duration;

/// The ping URLs by job (`[pings]`): built from the configuration when the command starts and
/// handed to each run.
#[derive(Debug, Clone, Default)]
pub struct Pings {
    pub urls: BTreeMap<String, String>,
}

impl Pings {
    fn url(&self, job: &str) -> Option<String> {
        self.urls
            .get(job)
            .map(|u| u.trim_end_matches('/').to_string())
    }

    /// The start ping of a run.
    pub fn start(&self, job: &str, run_id: i64) {
        if let Some(u) = self.url(job) {
            send(format!("{u}/start?rid={run_id}"), String::new());
        }
    }

    /// The end ping of a run: success, or its exit code.
    pub fn finish(&self, job: &str, run_id: i64, code: u8, summary: &str) {
        if let Some(u) = self.url(job) {
            let target = if code == 0 {
                format!("{u}?rid={run_id}")
            } else {
                format!("{u}/{code}?rid={run_id}")
            };
            send(target, summary.to_string());
        }
    }
}

/// Sends one ping and waits for it (at most 10 s), from synchronous code inside the runtime.
fn send(target: String, body: String) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let ping = async move {
        let client = crate::http::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        client
            .post(&target)
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        Ok::<_, reqwest::Error>(())
    };
    let result = tokio::task::block_in_place(|| handle.block_on(ping));
    if let Err(e) = result {
        tracing::warn!(
            "health ping failed ({}); the job goes on",
            crate::http::describe_error(&e, "ping URL")
        );
    }
}
