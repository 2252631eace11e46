//! What the HTTP clients share: how a failed request is described to an operator.

/// `request to the {service} timed out: …causes…`, one line with every cause.
pub fn describe_error(e: &reqwest::Error, service: &str) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut message = format!("request to the {service} {what}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}
