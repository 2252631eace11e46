//! Stripe's subscription endpoint (docs/src/reference/services.md#stripe): one GET per
//! subscription, the answer read in both API shapes (the current period on each item since
//! 2025-03-31, on the subscription before), errors classified by what the caller does.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// How a request failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The key was refused: stop the step.
    #[error("{0}")]
    Stop(String),
    /// `404 resource_missing`, or any other 4xx: this subscription only.
    #[error("{0}")]
    Permanent(String),
    /// 429, 5xx, timeouts after the retries: try again at the next run.
    #[error("{0}")]
    Transient(String),
}

/// What Stripe says of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeSubscription {
    pub status: String,
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub cancel_at_period_end: bool,
}

/// Reads a subscription object of either API version.
pub fn parse_subscription(v: &Value) -> Option<StripeSubscription> {
    let ts = |v: Option<&Value>| {
        v.and_then(Value::as_i64)
            .and_then(|s| DateTime::from_timestamp(s, 0))
    };
    let pair = |o: &Value| {
        Some((
            ts(o.get("current_period_start"))?,
            ts(o.get("current_period_end"))?,
        ))
    };
    let from_items = v
        .pointer("/items/data")
        .and_then(Value::as_array)
        .and_then(|items| items.iter().find_map(pair));
    Some(StripeSubscription {
        status: v.get("status")?.as_str()?.to_string(),
        period: from_items.or_else(|| pair(v)),
        cancel_at_period_end: v
            .get("cancel_at_period_end")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// The client.
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: String,
    version: String,
    retries: u32,
}

impl StripeClient {
    pub fn new(
        base: &str,
        key: &str,
        version: &str,
        timeout: Duration,
        retries: u32,
    ) -> anyhow::Result<StripeClient> {
        Ok(StripeClient {
            http: crate::http::builder()
                .user_agent(concat!("crm-jobs/", env!("CARGO_PKG_VERSION")))
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            version: version.to_string(),
            retries,
        })
    }

    /// GETs a subscription, trying again in place on 429 (as `Retry-After` says) and 5xx.
    pub async fn subscription(&self, id: &str) -> Result<StripeSubscription, StripeError> {
        crate::retry::Backoff {
            retries: self.retries,
            first: Duration::from_millis(500),
            jitter: 0.5,
            max_retry_after: None,
        }
        .run(
            "Stripe request",
            || self.once(id),
            |f: &Failed| matches!(f.0, StripeError::Transient(_)).then_some(f.1),
            |f, _| f,
        )
        .await
        .map_err(|f| f.0)
    }

    async fn once(&self, id: &str) -> Result<StripeSubscription, Failed> {
        // The id is one path segment whatever it holds: never a way to another endpoint.
        let Some(segment) = crate::http::path_segment(id) else {
            return Err(Failed(
                StripeError::Permanent(format!("`{id}` is not a Stripe subscription id")),
                None,
            ));
        };
        let resp = self
            .http
            .get(format!("{}/v1/subscriptions/{segment}", self.base))
            .bearer_auth(&self.key)
            .header("Stripe-Version", &self.version)
            .send()
            .await
            .map_err(|e| {
                Failed(
                    StripeError::Transient(crate::http::describe_error(&e, "Stripe API")),
                    None,
                )
            })?;
        let status = resp.status();
        let retry_after = crate::retry::retry_after(resp.headers());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_string();
        let code = body
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        use crate::retry::Verdict;
        match crate::retry::classify(status) {
            Verdict::Done => parse_subscription(&body).ok_or_else(|| {
                Failed(
                    StripeError::Permanent(format!(
                        "Stripe's answer for `{id}` has no status: the API changed?"
                    )),
                    None,
                )
            }),
            Verdict::Refused => Err(Failed(
                StripeError::Stop(format!(
                    "Stripe refused the secret key ({status}: {message}): check `CRM_JOBS_STRIPE_SECRET_KEY`; the step stopped"
                )),
                None,
            )),
            // A Retry-After longer than 2 minutes is not waited out in place: the next run tries.
            Verdict::TooMany if retry_after.is_some_and(|d| d > Duration::from_secs(120)) => {
                Err(Failed(
                    StripeError::Permanent(format!(
                        "Stripe answered 429 ({message}) asking to wait {}s: left for the next run",
                        retry_after.unwrap_or_default().as_secs()
                    )),
                    None,
                ))
            }
            Verdict::TooMany => Err(Failed(
                StripeError::Transient(format!("Stripe answered 429 ({message})")),
                retry_after,
            )),
            Verdict::Transient => Err(Failed(
                StripeError::Transient(format!("Stripe answered {status}")),
                retry_after,
            )),
            Verdict::Permanent => Err(Failed(
                StripeError::Permanent(format!(
                    "Stripe answered {status} for `{id}` ({code}: {message})"
                )),
                None,
            )),
        }
    }
}

/// A failed request and the wait its server asked for, if any.
#[derive(Debug)]
struct Failed(StripeError, Option<Duration>);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_api_shapes_are_read() {
        let basil: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/stripe/subscription_basil.json"
        ))
        .unwrap();
        let legacy: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/stripe/subscription_legacy.json"
        ))
        .unwrap();
        let b = parse_subscription(&basil).unwrap();
        assert_eq!(b.status, "active");
        assert_eq!(
            b.period.unwrap().0.timestamp(),
            1_896_570_518,
            "from items.data[0]"
        );
        let l = parse_subscription(&legacy).unwrap();
        assert_eq!(
            l.period.unwrap().1.timestamp(),
            1_234_567_890,
            "from the subscription"
        );
    }
}
