//! The emails of `renew`: subjects (docs/src/reference/domain.md#subscriptions), plain-text and
//! HTML bodies from the templates in `templates/email/` (rendered by [`crate::templates`], HTML
//! auto-escaped), dates and money in pt-BR, and a stable Message-ID per email.

use anyhow::Result;
use chrono::{DateTime, Utc};
use chrono_tz::America::Sao_Paulo;
use minijinja::context;

use crate::domain::money::format_brl;
use crate::store::SubscriptionRow;

/// What kind of email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Expiring,
    Expired,
    Renewed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Expiring => "expiring",
            Kind::Expired => "expired",
            Kind::Renewed => "renewed",
        }
    }
}

/// A rendered email.
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// `dd/mm/yyyy` in America/Sao_Paulo.
pub fn date_br(t: DateTime<Utc>) -> String {
    t.with_timezone(&Sao_Paulo).format("%d/%m/%Y").to_string()
}

/// Renders an email of `kind` for a subscription; `days` is for the expiring warning, and
/// `period` the (new) period shown.
pub fn render(
    kind: Kind,
    sub: &SubscriptionRow,
    app: &str,
    days: i64,
    period: (DateTime<Utc>, DateTime<Utc>),
) -> Result<Rendered> {
    let ctx = context! {
        nome => sub.user_name,
        plano => sub.plan_name,
        valor => format_brl(sub.price_centavos),
        dias => days,
        inicio => date_br(period.0),
        fim => date_br(period.1),
        app => app,
    };
    let render =
        |suffix: &str| crate::templates::render(&format!("email/{}.{suffix}", kind.as_str()), &ctx);
    let subject = match kind {
        Kind::Expiring => format!("⚠️ Sua assinatura expira em {days} dias"),
        Kind::Expired => "❌ Sua assinatura expirou".to_string(),
        Kind::Renewed => "✅ Assinatura renovada com sucesso!".to_string(),
    };
    Ok(Rendered {
        subject,
        text: render("txt")?,
        html: render("html")?,
    })
}

/// A Message-ID that depends only on what the email is about: `<renew.expiring.42.1763046000@domain>`.
pub fn message_id(
    kind: Kind,
    subscription_id: i64,
    period_end: DateTime<Utc>,
    domain: &str,
) -> String {
    format!(
        "<renew.{}.{subscription_id}.{}@{domain}>",
        kind.as_str(),
        period_end.timestamp()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let sub = SubscriptionRow {
            id: 1,
            external_id: "s1".into(),
            user_id: 1,
            user_name: "Ana <b>& João</b>".into(),
            email: "ana@example.com".into(),
            plan_id: 1,
            plan_name: "Pro".into(),
            price_centavos: 123_456,
            status: "active".into(),
            current_period_start: String::new(),
            current_period_end: String::new(),
            gateway_subscription_id: None,
        };
        let end = DateTime::parse_from_rfc3339("2025-11-13T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = render(Kind::Expiring, &sub, "Painel", 3, (end, end)).unwrap();
        assert_eq!(r.subject, "⚠️ Sua assinatura expira em 3 dias");
        assert!(r.text.contains("Olá, Ana <b>& João</b>!"));
        assert!(
            r.html.contains("Ana &lt;b&gt;&amp; João&lt;&#x2f;b&gt;"),
            "{}",
            r.html
        );
        assert!(
            r.text.contains("em 12/11/2025"),
            "São Paulo date: {}",
            r.text
        );
        assert!(r.text.contains("R$ 1.234,56"));
    }
}
