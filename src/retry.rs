//! Trying a request again, one way for every client: which HTTP answers are worth another try,
//! how long a server asked to wait (`Retry-After`, in seconds or as an HTTP date), and the wait
//! before each next try (the server's, else a doubling backoff with jitter) until the tries are
//! spent. The Nio API, the Canopus portal and Stripe retry in place with [`Backoff::run`]; the
//! CRM outbox keeps its items and retries them across runs, but reads `Retry-After` here too.

use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// What an HTTP status says of a request: one reading for every client, each of which decides
/// what it means for its service (a refusal stops the CRM's and Stripe's runs; to the Nio API it
/// is a session to renew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Done,
    /// 401 or 403: the credentials (or the session) were refused.
    Refused,
    /// 429: the server asks to slow down (see [`retry_after`]).
    TooMany,
    /// 408, 425 or 5xx: the same request may succeed if tried again.
    Transient,
    /// Anything else: this request will not succeed as it is.
    Permanent,
}

/// Reads an HTTP status as a [`Verdict`].
pub fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Done,
        401 | 403 => Verdict::Refused,
        429 => Verdict::TooMany,
        408 | 425 | 500..=599 => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

/// Whether an HTTP status is worth another try of the same request: a timeout (408), too early
/// (425), too many requests (429), or a server error (5xx).
pub fn is_transient_status(status: StatusCode) -> bool {
    matches!(classify(status), Verdict::TooMany | Verdict::Transient)
}

/// How long an answer's `Retry-After` asks to wait (RFC 9110 §10.2.3): delay-seconds, or an
/// HTTP-date (an instant already past asks for no wait). `None`: no header, or one that is
/// neither.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// A `Retry-After` value read at `now`. The date may be in any of the three forms a recipient
/// must accept (IMF-fixdate, RFC 850, asctime); the wait is rounded up to whole seconds.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(Duration::from_secs(
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    ))
}

/// Why no other try is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Every try allowed was made.
    Spent { tries: u32 },
    /// The server asked to wait longer than the client waits in place.
    TooLong { asked: Duration },
}

/// How a request is tried again in place after a transient failure: up to `retries` more
/// times, each wait the server's `Retry-After` when it gave one (up to `max_retry_after`),
/// else `first` doubled at each try, plus up to `jitter` of itself at random (so that clients
/// that failed together do not come back together).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub retries: u32,
    pub first: Duration,
    /// Up to this fraction of the wait is added at random (0 to 1).
    pub jitter: f64,
    /// The longest `Retry-After` waited out in place; `None`: any.
    pub max_retry_after: Option<Duration>,
}

impl Backoff {
    /// The wait before the next try, after `tries` tries again already made, or why there is
    /// none.
    pub fn wait(&self, tries: u32, retry_after: Option<Duration>) -> Result<Duration, GiveUp> {
        if tries >= self.retries {
            return Err(GiveUp::Spent { tries });
        }
        if let Some(asked) = retry_after {
            return match self.max_retry_after {
                Some(max) if asked > max => Err(GiveUp::TooLong { asked }),
                _ => Ok(asked),
            };
        }
        let wait = self.first.saturating_mul(1 << tries.min(16));
        Ok(wait + wait.mul_f64(fastrand::f64() * self.jitter.clamp(0.0, 1.0)))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the tries are spent. `transient`
    /// says whether an error is worth another try (`Some`, with the server's `Retry-After` if
    /// any) or not (`None`: it is returned at once); `give_up` turns the last transient error
    /// into the one returned when no other try is made.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
        transient: impl Fn(&E) -> Option<Option<Duration>>,
        give_up: impl FnOnce(E, GiveUp) -> E,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut tries = 0;
        loop {
            let err = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(retry_after) = transient(&err) else {
                return Err(err);
            };
            match self.wait(tries, retry_after) {
                Ok(wait) => {
                    tries += 1;
                    tracing::debug!("{what} failed ({err}); trying again in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Err(why) => return Err(give_up(err, why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date.
    fn example_date() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn retry_after_in_seconds() {
        let now = example_date();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let now = example_date() - Duration::from_secs(90);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",  // IMF-fixdate
            "Sunday, 06-Nov-94 08:49:37 GMT", // RFC 850
            "Sun Nov  6 08:49:37 1994",       // asctime
        ] {
            assert_eq!(
                parse_retry_after(form, now),
                Some(Duration::from_secs(90)),
                "{form}"
            );
        }
        // Part of a second still to go is waited as a whole one.
        let now = example_date() - Duration::from_millis(1500);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(2))
        );
        // A date already past: no wait.
        let now = example_date() + Duration::from_secs(3600);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_that_is_neither_is_none() {
        let now = example_date();
        for garbage in [
            "",
            "   ",
            "soon",
            "-5",
            "+5",
            "1.5",
            "12s",
            "99999999999999999999999",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "06 Nov 1994 08:49:37",
            "2025-11-10T12:00:00Z",
        ] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(30)));
    }

    #[test]
    fn every_status_has_one_reading() {
        let v = |s: u16| classify(StatusCode::from_u16(s).unwrap());
        assert_eq!(v(200), Verdict::Done);
        assert_eq!(v(204), Verdict::Done);
        assert_eq!(v(401), Verdict::Refused);
        assert_eq!(v(403), Verdict::Refused);
        assert_eq!(v(429), Verdict::TooMany);
        assert_eq!(v(408), Verdict::Transient);
        assert_eq!(v(503), Verdict::Transient);
        assert_eq!(v(404), Verdict::Permanent);
        assert_eq!(v(422), Verdict::Permanent);
        assert_eq!(v(301), Verdict::Permanent);
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 409, 422] {
            assert!(
                !is_transient_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn waits_double_with_jitter_and_the_tries_end() {
        let b = Backoff {
            retries: 3,
            first: Duration::from_millis(100),
            jitter: 0.5,
            max_retry_after: Some(Duration::from_secs(60)),
        };
        for (tries, base) in [(0, 100), (1, 200), (2, 400)] {
            let w = b.wait(tries, None).unwrap();
            assert!(
                w >= Duration::from_millis(base) && w <= Duration::from_millis(base * 3 / 2),
                "{tries}: {w:?}"
            );
        }
        assert_eq!(b.wait(3, None), Err(GiveUp::Spent { tries: 3 }));
        assert_eq!(
            b.wait(0, Some(Duration::from_secs(7))),
            Ok(Duration::from_secs(7))
        );
        assert_eq!(
            b.wait(0, Some(Duration::from_secs(61))),
            Err(GiveUp::TooLong {
                asked: Duration::from_secs(61)
            })
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn run_tries_again_only_what_is_transient() {
        let b = Backoff {
            retries: 2,
            first: Duration::ZERO,
            jitter: 0.0,
            max_retry_after: None,
        };
        let calls = std::cell::Cell::new(0);
        let out: Result<u32, String> = b
            .run(
                "test",
                || {
                    calls.set(calls.get() + 1);
                    async { Err::<u32, _>("503".to_string()) }
                },
                |_| Some(None),
                |e, why| format!("{e} ({why:?})"),
            )
            .await;
        assert_eq!(out, Err("503 (Spent { tries: 2 })".into()));
        assert_eq!(calls.get(), 3, "one try and two again");
        calls.set(0);
        let out: Result<u32, String> = b
            .run(
                "test",
                || {
                    calls.set(calls.get() + 1);
                    async { Err::<u32, _>("404".to_string()) }
                },
                |_| None,
                |e, _| e,
            )
            .await;
        assert_eq!(out, Err("404".into()));
        assert_eq!(calls.get(), 1, "a permanent failure is not tried again");
    }
}
