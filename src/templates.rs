//! The templates under `templates/`, compiled into the binary: the emails of `renew`
//! (`email/`), the alert emails (`alert/`) and the page of `report` (`report.html`).
//!
//! minijinja renders them. A `.html` template is auto-escaped, so a value (a customer's name, an
//! error from a service) is always text, never markup; a `.txt` one is not. What a file holds is
//! what comes out, its final newline included.

use std::sync::LazyLock;

use anyhow::{Context, Result};
use minijinja::Environment;
use serde::Serialize;

/// Every template, by its path under `templates/`.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "email/expiring.txt",
        include_str!("../templates/email/expiring.txt"),
    ),
    (
        "email/expiring.html",
        include_str!("../templates/email/expiring.html"),
    ),
    (
        "email/expired.txt",
        include_str!("../templates/email/expired.txt"),
    ),
    (
        "email/expired.html",
        include_str!("../templates/email/expired.html"),
    ),
    (
        "email/renewed.txt",
        include_str!("../templates/email/renewed.txt"),
    ),
    (
        "email/renewed.html",
        include_str!("../templates/email/renewed.html"),
    ),
    (
        "alert/opened.txt",
        include_str!("../templates/alert/opened.txt"),
    ),
    (
        "alert/opened.html",
        include_str!("../templates/alert/opened.html"),
    ),
    (
        "alert/cleared.txt",
        include_str!("../templates/alert/cleared.txt"),
    ),
    (
        "alert/cleared.html",
        include_str!("../templates/alert/cleared.html"),
    ),
    ("report.html", include_str!("../templates/report.html")),
];

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)
            .expect("the repo's templates parse (a unit test renders each)");
    }
    env
});

/// Renders `templates/<name>` with `ctx`.
pub fn render(name: &str, ctx: impl Serialize) -> Result<String> {
    ENVIRONMENT
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .with_context(|| format!("cannot render the template `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            assert!(ENVIRONMENT.get_template(name).is_ok(), "{name}");
        }
    }
}
