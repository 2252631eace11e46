//! `import subscriptions`, `renew` (every step) and the subscription rows of `cleanup`, against
//! the sandbox's Stripe and SMTP server.

use crm_jobs::sandbox::smtp::SmtpFault;
use crm_jobs::sandbox::{Fault, Route};

use crate::support::*;

/// NOW is 2025-11-10T15:00:00Z.
fn ts(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
}

/// A plan, and per subscription a user: (id, status, period end, extra JSON fields).
fn subscriptions(env: &Env, subs: &[(&str, &str, &str, &str)]) {
    let mut lines =
        vec![r#"{"type": "plan", "id": "pro", "name": "Pro", "price": "R$ 49,90"}"#.to_string()];
    for (id, status, end, extra) in subs {
        lines.push(format!(
            r#"{{"type": "user", "id": "u-{id}", "name": "Usuária {id}", "email": "{id}@example.com", "plan": "pro"}}"#
        ));
        lines.push(format!(
            r#"{{"type": "subscription", "id": "{id}", "user": "u-{id}", "plan": "pro", "status": "{status}", "current_period_start": "2025-10-10T15:00:00Z", "current_period_end": "{end}", "gateway": "manual"{extra}}}"#
        ));
    }
    let file = env.path("subs.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = env.run(&["import", "subscriptions", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
}

fn outbox(env: &Env) -> Vec<(String, String, String)> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT kind, to_address, status FROM email_outbox ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn expiring_warns_once_per_period_at_the_boundaries() {
    let env = Env::new();
    subscriptions(
        &env,
        &[
            ("exact", "active", "2025-11-13T15:00:00Z", ""),
            ("later", "active", "2025-11-13T15:00:01Z", ""),
            ("soon", "active", "2025-11-11T10:00:00Z", ""),
            ("inactive", "inactive", "2025-11-12T15:00:00Z", ""),
        ],
    );
    let out = env.run(&["renew", "--step", "expiring"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        outbox(&env),
        vec![
            (
                "expiring".into(),
                "soon@example.com".into(),
                "pending".into()
            ),
            (
                "expiring".into(),
                "exact@example.com".into(),
                "pending".into()
            ),
        ]
    );
    let subject: String =
        env.query("SELECT subject FROM email_outbox WHERE to_address = 'exact@example.com'");
    assert_eq!(subject, "⚠️ Sua assinatura expira em 3 dias");
    let audits: i64 = env.query("SELECT COUNT(*) FROM audit_log WHERE action = 'expiring_warned'");
    assert_eq!(audits, 2);
    // Again: nothing new for the same period.
    assert_eq!(env.run(&["renew", "--step", "expiring"]).code, 0);
    assert_eq!(outbox(&env).len(), 2);
}

#[test]
fn expired_takes_the_plan_away_unless_set_to_cancel_at_period_end() {
    let env = Env::new();
    subscriptions(
        &env,
        &[
            ("ended", "active", "2025-11-10T14:59:59Z", ""),
            (
                "cancels",
                "active",
                "2025-11-10T14:00:00Z",
                r#", "cancel_at_period_end": true"#,
            ),
            ("running", "active", "2025-11-10T15:00:01Z", ""),
        ],
    );
    let out = env.run(&["renew", "--step", "expired"]);
    assert_eq!(out.code, 0, "{out:?}");
    let (status, plan): (String, Option<i64>) = env
        .db()
        .query_row(
            "SELECT s.status, u.plan_id FROM subscriptions s JOIN users u ON u.id = s.user_id WHERE s.external_id = 'ended'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), plan), ("inactive", None));
    let untouched: i64 = env.query("SELECT COUNT(*) FROM subscriptions WHERE status = 'active'");
    assert_eq!(untouched, 2);
    let trail: Vec<String> = {
        let db = env.db();
        let mut stmt = db.prepare("SELECT entity || ':' || action || ':' || before || '->' || after FROM audit_log ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        trail,
        vec![
            r#"subscription:expired:{"status":"active"}->{"status":"inactive"}"#.to_string(),
            r#"user:plan_removed:{"plan_id":1}->{"plan_id":null}"#.to_string(),
        ]
    );
    assert_eq!(
        outbox(&env),
        vec![(
            "expired".into(),
            "ended@example.com".into(),
            "pending".into()
        )]
    );
}

fn stripe_case(version: &str) {
    let env = Env::new();
    set_key(&env, "stripe", "retries", "1");
    let mut cfg = std::fs::read_to_string(env.path("config.toml")).unwrap();
    cfg = cfg.replacen(
        "[stripe]\n",
        &format!("[stripe]\napi_version = \"{version}\"\n"),
        1,
    );
    std::fs::write(env.path("config.toml"), cfg).unwrap();
    subscriptions(
        &env,
        &[
            (
                "renews",
                "active",
                "2025-11-10T20:00:00Z",
                r#", "gateway": "stripe", "gateway_subscription_id": "sub_1""#,
            ),
            (
                "late",
                "active",
                "2025-11-10T21:00:00Z",
                r#", "gateway": "stripe", "gateway_subscription_id": "sub_2""#,
            ),
            (
                "gone",
                "active",
                "2025-11-10T22:00:00Z",
                r#", "gateway": "stripe", "gateway_subscription_id": "sub_404""#,
            ),
            (
                "tomorrow",
                "active",
                "2025-11-11T12:00:00Z",
                r#", "gateway": "stripe", "gateway_subscription_id": "sub_3""#,
            ),
        ],
    );
    env.sandbox.stripe.set(
        "sub_1",
        "active",
        ts("2025-11-10T20:00:00Z"),
        ts("2025-12-10T20:00:00Z"),
    );
    env.sandbox.stripe.set(
        "sub_2",
        "past_due",
        ts("2025-10-10T21:00:00Z"),
        ts("2025-11-10T21:00:00Z"),
    );
    // One 429 first: waited out as told.
    env.sandbox.faults.push(
        Route::Stripe,
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
        1,
    );
    let out = env.run(&["renew", "--step", "stripe", "--json"]);
    assert_eq!(out.code, 3, "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["counters"]["renewed"], 1, "{out:?}");
    assert_eq!(summary["counters"]["not_renewed"], 1);
    assert_eq!(summary["counters"]["stripe_errors"], 1);
    assert!(out.stderr.contains("subscription `gone`: Stripe answered 404 Not Found for `sub_404` (resource_missing: No such subscription: 'sub_404')"), "{out:?}");
    let (start, end): (String, String) = env
        .db()
        .query_row("SELECT current_period_start, current_period_end FROM subscriptions WHERE external_id = 'renews'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (start.as_str(), end.as_str()),
        ("2025-11-10T20:00:00.000Z", "2025-12-10T20:00:00.000Z"),
        "Stripe's dates, not now + 30 days"
    );
    assert_eq!(
        outbox(&env),
        vec![(
            "renewed".into(),
            "renews@example.com".into(),
            "pending".into()
        )]
    );
    let reason: String = env.query("SELECT reason FROM audit_log WHERE action = 'not_renewed'");
    assert_eq!(reason, "Stripe says `past_due`: not a renewal");
}

#[test]
fn stripe_renewals_read_the_current_api_shape() {
    stripe_case("2025-03-31.basil");
}

#[test]
fn stripe_renewals_read_the_legacy_api_shape() {
    stripe_case("2024-06-20");
}

#[test]
fn a_refused_stripe_key_stops_the_step() {
    let env = Env::new();
    subscriptions(
        &env,
        &[(
            "renews",
            "active",
            "2025-11-10T20:00:00Z",
            r#", "gateway": "stripe", "gateway_subscription_id": "sub_1""#,
        )],
    );
    let out = env
        .cmd(&["renew", "--step", "stripe"])
        .env("CRM_JOBS_STRIPE_SECRET_KEY", "sk_wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(
            "error: Stripe refused the secret key (401 Unauthorized: Invalid API Key provided"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("sk_wrong"));
}

#[test]
fn emails_go_out_once_multipart_with_an_encoded_subject() {
    let env = Env::new();
    subscriptions(&env, &[("exact", "active", "2025-11-13T15:00:00Z", "")]);
    let out = env.run(&["renew"]);
    assert_eq!(out.code, 0, "{out:?}");
    let got = env.sandbox.smtp.received();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.to, vec!["exact@example.com".to_string()]);
    assert_eq!(m.auth_user.as_deref(), Some(crm_jobs::sandbox::SMTP_USER));
    let subject = m.data.lines().find(|l| l.starts_with("Subject:")).unwrap();
    assert!(
        subject.to_lowercase().contains("=?utf-8?"),
        "RFC 2047: {subject}"
    );
    assert_eq!(
        decode_rfc2047(&subject["Subject:".len()..]),
        "⚠️ Sua assinatura expira em 3 dias",
        "round trip"
    );
    assert!(m.data.contains("multipart/alternative"));
    assert!(m.data.contains("text/plain") && m.data.contains("text/html"));
    assert!(
        m.data
            .contains("Message-ID: <renew.expiring.1.1763046000@crm-jobs.localhost>"),
        "{}",
        m.data
    );
    let decoded: String = env.query("SELECT subject FROM email_outbox");
    assert_eq!(decoded, "⚠️ Sua assinatura expira em 3 dias");
    // Nothing is sent twice.
    assert_eq!(env.run(&["renew"]).code, 0);
    assert_eq!(env.sandbox.smtp.received().len(), 1);
}

#[test]
fn smtp_down_keeps_the_changes_and_sends_later_exactly_once() {
    let env = Env::new();
    subscriptions(&env, &[("ended", "active", "2025-11-10T14:00:00Z", "")]);
    env.sandbox.smtp.set_down(true);
    let out = env.run(&["renew"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("1 email(s) wait for the next run (the state changes stand)"),
        "{out:?}"
    );
    let status: String = env.query("SELECT status FROM subscriptions");
    assert_eq!(status, "inactive");
    assert_eq!(outbox(&env)[0].2, "pending");
    env.sandbox.smtp.set_down(false);
    assert_eq!(env.run(&["renew"]).code, 0);
    assert_eq!(env.run(&["renew"]).code, 0);
    assert_eq!(env.sandbox.smtp.received().len(), 1);
    assert_eq!(outbox(&env)[0].2, "sent");
}

#[test]
fn a_connection_lost_after_data_is_unknown_and_not_resent() {
    let env = Env::new();
    subscriptions(&env, &[("ended", "active", "2025-11-10T14:00:00Z", "")]);
    env.sandbox.smtp.push_fault(SmtpFault::DropAfterData);
    let out = env.run(&["renew"]);
    assert_eq!(out.code, 3, "the expiry done, the email unknown: {out:?}");
    assert!(
        out.stderr
            .contains("the message may have been delivered; not resent"),
        "{out:?}"
    );
    assert_eq!(
        env.sandbox.smtp.received().len(),
        1,
        "the server did take it"
    );
    assert_eq!(outbox(&env)[0].2, "unknown");
    assert_eq!(env.run(&["renew"]).code, 0);
    assert_eq!(env.sandbox.smtp.received().len(), 1, "not resent by itself");
    // The operator checked the mailbox and decides to send it again.
    let resend = env.run(&["renew", "--resend", "1"]);
    assert!(
        resend.stderr.contains("1 email(s) put back in the queue"),
        "{resend:?}"
    );
    assert_eq!(env.run(&["renew", "--step", "emails"]).code, 0);
    assert_eq!(env.sandbox.smtp.received().len(), 2);
}

#[test]
fn a_run_killed_while_sending_reports_the_email_as_unknown() {
    let env = Env::new();
    subscriptions(&env, &[("ended", "active", "2025-11-10T14:00:00Z", "")]);
    assert_eq!(env.run(&["renew", "--step", "expired"]).code, 0);
    // What a process killed in the middle of the SMTP conversation leaves behind.
    env.db()
        .execute("UPDATE email_outbox SET status = 'sending'", [])
        .unwrap();
    let out = env.run(&["renew", "--step", "emails"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("1 email(s) were being handed to the SMTP server when a process died: outcome unknown, not resent"), "{out:?}");
    assert!(env.sandbox.smtp.received().is_empty());
    assert_eq!(outbox(&env)[0].2, "unknown");
}

#[test]
fn starttls_and_auth_with_the_servers_certificate() {
    let env = Env::new();
    env.sandbox.smtp.set_require_tls(true);
    std::fs::write(env.path("smtp-ca.pem"), env.sandbox.smtp.certificate_pem()).unwrap();
    set_key(&env, "smtp", "tls", "\"starttls\"");
    subscriptions(&env, &[("ended", "active", "2025-11-10T14:00:00Z", "")]);
    // Without the server's CA configured, its certificate is refused: nothing is sent, the
    // email waits.
    let refused = env.run(&["renew"]);
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(refused.stderr.contains("certificate"), "{refused:?}");
    assert!(env.sandbox.smtp.received().is_empty());
    let cfg = std::fs::read_to_string(env.path("config.toml"))
        .unwrap()
        .replacen(
            "[smtp]\n",
            &format!(
                "[smtp]\nca_file = \"{}\"\ntls_server_name = \"localhost\"\n",
                env.path("smtp-ca.pem").display()
            ),
            1,
        );
    std::fs::write(env.path("config.toml"), cfg).unwrap();
    let out = env.run(&["renew", "--step", "emails"]);
    assert_eq!(out.code, 0, "{out:?}");
    let got = env.sandbox.smtp.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}

#[test]
fn development_mode_writes_eml_files() {
    let env = Env::new();
    let cfg = std::fs::read_to_string(env.path("config.toml"))
        .unwrap()
        .replacen(
            "[smtp]\n",
            &format!(
                "[smtp]\nmode = \"eml\"\neml_dir = \"{}\"\n",
                env.path("outbox").display()
            ),
            1,
        );
    std::fs::write(env.path("config.toml"), cfg).unwrap();
    subscriptions(&env, &[("ended", "active", "2025-11-10T14:00:00Z", "")]);
    assert_eq!(env.run(&["renew"]).code, 0);
    let files = files_under(&env.path("outbox"));
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("To: ended@example.com") && text.contains("multipart/alternative"));
    assert!(env.sandbox.smtp.received().is_empty());
}

#[test]
fn bad_subscription_lines_are_reported() {
    let env = Env::new();
    let file = env.path("bad.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"type": "plan", "id": "pro", "name": "Pro", "price": 4990}"#,
            r#"{"type": "user", "id": "u1", "name": "Ana", "email": "not-an-email"}"#,
            r#"{"type": "subscription", "id": "s1", "user": "nobody", "plan": "pro", "status": "active", "current_period_start": "2025-10-10T00:00:00Z", "current_period_end": "2025-11-10T00:00:00Z"}"#,
            r#"{"type": "coupon", "id": "c1"}"#,
            r#"{"type": "payment", "id": "p1", "user": "u1", "amount": 10, "status": "pending", "created_at": "ontem"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = env.run(&["import", "subscriptions", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    let f = file.display();
    for expected in [
        format!("{f}:2: `email` = `not-an-email` is not an email address; line skipped"),
        format!("{f}:3: unknown user `nobody`; line skipped"),
        format!(
            "{f}:4: `type` = `coupon` is not one of plan, user, subscription, session, payment; line skipped"
        ),
        format!(
            "{f}:5: `created_at` = `ontem` is not an RFC 3339 instant (e.g. `2025-11-13T12:00:00Z`); line skipped"
        ),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "missing `{expected}` in {out:?}"
        );
    }
}

#[test]
fn cleanup_soft_deletes_old_sessions_and_cancels_stale_payments_with_an_audit_trail() {
    let env = Env::new();
    subscriptions(&env, &[("s", "active", "2025-12-10T15:00:00Z", "")]);
    let file = env.path("more.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"type": "session", "id": "old", "user": "u-s", "expires_at": "2025-10-01T00:00:00Z"}"#,
            r#"{"type": "session", "id": "new", "user": "u-s", "expires_at": "2025-10-20T00:00:00Z"}"#,
            r#"{"type": "payment", "id": "stale", "user": "u-s", "amount": 4990, "status": "pending", "created_at": "2025-11-01T00:00:00Z"}"#,
            r#"{"type": "payment", "id": "fresh", "user": "u-s", "amount": 4990, "status": "pending", "created_at": "2025-11-05T00:00:00Z"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    assert_eq!(
        env.run(&["import", "subscriptions", file.to_str().unwrap()])
            .code,
        0
    );
    let out = env.run(&["cleanup", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let deleted: String =
        env.query("SELECT group_concat(external_id) FROM sessions WHERE deleted_at IS NOT NULL");
    assert_eq!(deleted, "old");
    let cancelled: String =
        env.query("SELECT group_concat(external_id) FROM payments WHERE status = 'cancelled'");
    assert_eq!(cancelled, "stale");
    let audits: String = env.query("SELECT group_concat(entity || ':' || action) FROM audit_log");
    assert_eq!(audits, "session:soft_deleted,payment:cancelled");
}

/// Decodes the encoded words (`=?utf-8?b?...?=` and `=?utf-8?q?...?=`) of a header value.
fn decode_rfc2047(value: &str) -> String {
    use base64::Engine;
    let mut out = String::new();
    let mut last_encoded = false;
    for word in value.split_whitespace() {
        let lower = word.to_lowercase();
        let decoded = if lower.starts_with("=?utf-8?b?") && word.ends_with("?=") {
            let b = &word[10..word.len() - 2];
            Some(
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                    .unwrap(),
            )
        } else if lower.starts_with("=?utf-8?q?") && word.ends_with("?=") {
            let q = word[10..word.len() - 2].replace('_', " ");
            let mut bytes = Vec::new();
            let mut it = q.bytes();
            while let Some(c) = it.next() {
                if c == b'=' {
                    let h: String = [it.next().unwrap() as char, it.next().unwrap() as char]
                        .iter()
                        .collect();
                    bytes.push(u8::from_str_radix(&h, 16).unwrap());
                } else {
                    bytes.push(c);
                }
            }
            Some(String::from_utf8(bytes).unwrap())
        } else {
            None
        };
        match decoded {
            // Whitespace between two encoded words is not part of the text (RFC 2047 §6.2).
            Some(text) => {
                if !out.is_empty() && !last_encoded {
                    out.push(' ');
                }
                out.push_str(&text);
                last_encoded = true;
            }
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
                last_encoded = false;
            }
        }
    }
    out
}

#[test]
fn a_stripe_subscription_is_not_expired_before_stripe_had_its_say() {
    let env = Env::new();
    subscriptions(
        &env,
        &[(
            "yesterday",
            "active",
            "2025-11-09T18:00:00Z",
            r#", "gateway": "stripe", "gateway_subscription_id": "sub_y""#,
        )],
    );
    env.sandbox.stripe.set(
        "sub_y",
        "active",
        ts("2025-11-09T18:00:00Z"),
        ts("2025-12-09T18:00:00Z"),
    );
    let out = env.run(&["renew", "--step", "expired", "--step", "stripe"]);
    assert_eq!(out.code, 2, "one --step at a time: {out:?}");
    assert_eq!(env.run(&["renew", "--step", "expired"]).code, 0);
    let status: String = env.query("SELECT status FROM subscriptions");
    assert_eq!(status, "active", "within `[renew] stripe_grace_days`");
    assert_eq!(env.run(&["renew", "--step", "stripe"]).code, 0);
    let end: String = env.query("SELECT current_period_end FROM subscriptions");
    assert_eq!(end, "2025-12-09T18:00:00.000Z");
}

/// Issue 14, point 2: a Stripe subscription in `trialing` whose period advanced is not a
/// renewal: an audit row, no change, no email.
#[test]
fn trialing_is_not_a_renewal() {
    let env = Env::new();
    subscriptions(
        &env,
        &[(
            "trial",
            "active",
            "2025-11-10T20:00:00Z",
            r#", "gateway": "stripe", "gateway_subscription_id": "sub_trial""#,
        )],
    );
    env.sandbox.stripe.set(
        "sub_trial",
        "trialing",
        ts("2025-11-10T20:00:00Z"),
        ts("2025-12-10T20:00:00Z"),
    );
    let out = env.run(&["renew", "--step", "stripe", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["counters"]["not_renewed"], 1, "{out:?}");
    assert!(summary["counters"].get("renewed").is_none(), "{out:?}");
    let end: String = env.query("SELECT current_period_end FROM subscriptions");
    assert_eq!(end, "2025-11-10T20:00:00.000Z", "the period is not moved");
    let trail: String = env.query("SELECT action || ': ' || reason FROM audit_log");
    assert_eq!(trail, "not_renewed: Stripe says `trialing`: not a renewal");
    assert!(outbox(&env).is_empty(), "no email");
    assert!(
        out.stderr.contains(
            "subscription `trial` (trial@example.com): Stripe says `trialing`; not renewed"
        ),
        "{out:?}"
    );
}

/// Issue 14, point 6: a gateway id is validated on import, and an id that reached the store
/// anyway (a host inserting rows) stays one path segment of the Stripe request.
#[test]
fn a_stripe_id_is_an_id() {
    let env = Env::new();
    let file = env.path("ids.jsonl");
    let line = |id: &str, gateway: &str, gid: &str| {
        format!(
            r#"{{"type": "subscription", "id": "{id}", "user": "u1", "plan": "pro", "status": "active", "current_period_start": "2025-10-10T20:00:00Z", "current_period_end": "2025-11-10T20:00:00Z", "gateway": "{gateway}", "gateway_subscription_id": "{gid}"}}"#
        )
    };
    std::fs::write(
        &file,
        [
            r#"{"type": "plan", "id": "pro", "name": "Pro", "price": 4990}"#.to_string(),
            r#"{"type": "user", "id": "u1", "name": "Ana", "email": "ana@example.com"}"#
                .to_string(),
            line("s1", "stripe", "../../v1/customers?x=1#"),
            line("s2", "stripe", "sub_"),
            line("s3", "paypal", "I-BW452/GLLEP1G"),
            line("s4", "stripe", "sub_1QxYzAbC"),
            line("s5", "paypal", "I-BW452GLLEP1G"),
        ]
        .join("\n"),
    )
    .unwrap();
    let out = env.run(&["import", "subscriptions", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    let f = file.display();
    for expected in [
        format!(
            "{f}:3: `gateway_subscription_id` = `../../v1/customers?x=1#` is not a Stripe subscription id (`sub_` followed by letters and digits, e.g. `sub_1QxYzAbCdEfGh`); line skipped"
        ),
        format!(
            "{f}:4: `gateway_subscription_id` = `sub_` is not a Stripe subscription id (`sub_` followed by letters and digits, e.g. `sub_1QxYzAbCdEfGh`); line skipped"
        ),
        format!(
            "{f}:5: `gateway_subscription_id` = `I-BW452/GLLEP1G` is not a `paypal` subscription id (letters, digits, `-` and `_`, at most 255); line skipped"
        ),
    ] {
        assert!(
            out.stderr.contains(&expected),
            "missing `{expected}` in {out:?}"
        );
    }
    let imported: String = env.query("SELECT group_concat(external_id) FROM subscriptions");
    assert_eq!(imported, "s4,s5");

    // A row a host wrote directly: the client encodes the id into one segment.
    env.db()
        .execute(
            "UPDATE subscriptions SET gateway_subscription_id = '../../v1/customers?x=1#' WHERE external_id = 's4'",
            [],
        )
        .unwrap();
    let out = env.run(&["renew", "--step", "stripe"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        env.sandbox.stripe.requests(),
        vec!["/stripe/v1/subscriptions/..%2F..%2Fv1%2Fcustomers%3Fx%3D1%23".to_string()]
    );
    assert!(
        out.stderr.contains("Stripe answered 404 Not Found for `../../v1/customers?x=1#` (resource_missing: No such subscription: '../../v1/customers?x=1#')"),
        "{out:?}"
    );
}

/// Issue 14, point 1: over HTTPS, a certificate listed in `[tls] ca_file` is trusted, both as
/// the server's own self-signed `CA:TRUE` certificate (`openssl req -x509`) and as the CA that
/// signed the server's; without it, refused. `renew` and `doctor`, both ways.
#[test]
fn stripe_over_https_trusts_a_pinned_self_signed_certificate_and_a_test_ca() {
    for self_signed in [true, false] {
        let env = Env::new();
        let (url, pem) = if self_signed {
            (
                env.sandbox.tls_self_signed_url("stripe"),
                env.sandbox.tls_self_signed_pem().to_string(),
            )
        } else {
            (
                env.sandbox.tls_url("stripe"),
                env.sandbox.tls_ca_pem().to_string(),
            )
        };
        set_key(&env, "stripe", "base_url", &format!("\"{url}\""));
        subscriptions(
            &env,
            &[(
                "renews",
                "active",
                "2025-11-10T20:00:00Z",
                r#", "gateway": "stripe", "gateway_subscription_id": "sub_1""#,
            )],
        );
        env.sandbox.stripe.set(
            "sub_1",
            "active",
            ts("2025-11-10T20:00:00Z"),
            ts("2025-12-10T20:00:00Z"),
        );
        // Not trusted yet: refused, nothing changed.
        let refused = env.run(&["renew", "--step", "stripe"]);
        assert_eq!(refused.code, 1, "{refused:?}");
        assert!(
            refused
                .stderr
                .contains("the server's TLS certificate is not trusted"),
            "{refused:?}"
        );
        let doctor = env.run(&["doctor"]);
        assert!(
            doctor
                .stdout
                .contains("fail  stripe       request to the stripe service could not connect"),
            "{doctor:?}"
        );
        // Trusted through `[tls] ca_file`.
        std::fs::write(env.path("ca.pem"), &pem).unwrap();
        let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
        std::fs::write(
            env.path("config.toml"),
            format!(
                "[tls]\nca_file = \"{}\"\n\n{config}",
                env.path("ca.pem").display()
            ),
        )
        .unwrap();
        let doctor = env.run(&["doctor"]);
        assert!(
            doctor.stdout.contains(&format!(
                "ok    stripe       `{url}` answers (404 Not Found)"
            )),
            "self-signed {self_signed}: {doctor:?}"
        );
        let out = env.run(&["renew", "--step", "stripe"]);
        assert_eq!(out.code, 0, "self-signed {self_signed}: {out:?}");
        let end: String = env.query("SELECT current_period_end FROM subscriptions");
        assert_eq!(end, "2025-12-10T20:00:00.000Z");
    }
}

/// The statuses of the outbox, by recipient.
fn statuses(env: &Env) -> Vec<(String, String)> {
    outbox(env)
        .into_iter()
        .map(|(_, to, st)| (to, st))
        .collect()
}

/// Issue 14, point 3: the emails of a run go over one connection, one TLS handshake and one
/// AUTH, MAIL, RCPT and DATA pipelined: two round trips per message once the connection is up.
#[test]
fn the_emails_of_a_run_share_one_connection() {
    let env = Env::new();
    let subs: Vec<(String, &str, &str, &str)> = (1..=5)
        .map(|i| (format!("e{i}"), "active", "2025-11-12T15:00:00Z", ""))
        .collect();
    let subs: Vec<(&str, &str, &str, &str)> = subs
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), *b, *c, *d))
        .collect();
    subscriptions(&env, &subs);
    let out = env.run(&["renew"]);
    assert_eq!(out.code, 0, "{out:?}");
    let got = env.sandbox.smtp.received();
    let to: Vec<String> = got.iter().map(|m| m.to[0].clone()).collect();
    assert_eq!(
        to,
        (1..=5)
            .map(|i| format!("e{i}@example.com"))
            .collect::<Vec<_>>()
    );
    assert!(got.iter().all(|m| m.connection == 1), "one connection");
    assert_eq!(env.sandbox.smtp.connections(), 1);
    assert_eq!(env.sandbox.smtp.logins(), 1);
    // Greeting, EHLO, AUTH, then 2 per message (MAIL+RCPT+DATA, the data); QUIT's answer goes
    // out with the hang-up.
    assert_eq!(env.sandbox.smtp.flushes(), 3 + 2 * 5);
}

/// Issue 14, point 3: after an error the connection is opened again; a message whose outcome is
/// unknown is not sent again, one the server deferred waits, and one that never reached the
/// server (it hung up at MAIL) goes at once over a new connection.
#[test]
fn after_an_smtp_error_the_connection_is_opened_again_and_nothing_is_sent_twice() {
    let env = Env::new();
    subscriptions(
        &env,
        &[
            ("a", "active", "2025-11-12T15:00:00Z", ""),
            ("b", "active", "2025-11-12T15:00:01Z", ""),
            ("c", "active", "2025-11-12T15:00:02Z", ""),
            ("d", "active", "2025-11-12T15:00:03Z", ""),
            ("e", "active", "2025-11-12T15:00:04Z", ""),
        ],
    );
    let smtp = &env.sandbox.smtp;
    // MAIL faults go to the next MAILs in order, data faults to the next final dots: a gets
    // 451 at MAIL; the server hangs up at b's MAIL (connection 1), b goes at once over
    // connection 2, where the server drops it after its data; c, d and e go over connection 3.
    smtp.push_fault(SmtpFault::RejectMail {
        code: 451,
        text: "4.3.0 Try again later".into(),
    });
    smtp.push_fault(SmtpFault::DropAfterData);
    smtp.push_fault(SmtpFault::HangUpAtMail);
    let out = env.run(&["renew"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(
        statuses(&env),
        vec![
            ("a@example.com".into(), "pending".into()),
            ("b@example.com".into(), "unknown".into()),
            ("c@example.com".into(), "sent".into()),
            ("d@example.com".into(), "sent".into()),
            ("e@example.com".into(), "sent".into()),
        ]
    );
    let got: Vec<(String, u64)> = smtp
        .received()
        .iter()
        .map(|m| (m.to[0].clone(), m.connection))
        .collect();
    assert_eq!(
        got,
        vec![
            ("b@example.com".into(), 2),
            ("c@example.com".into(), 3),
            ("d@example.com".into(), 3),
            ("e@example.com".into(), 3),
        ]
    );
    assert_eq!(smtp.connections(), 3);
    assert!(
        out.stderr.contains("email #1 to a@example.com: the SMTP server deferred it: transient error (451): 4.3.0 Try again later; it waits for the next run"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("email #2 to b@example.com: the SMTP conversation broke without an answer (the server closed the connection): the message may have been delivered; not resent"),
        "{out:?}"
    );
    // The next run sends the deferred one only.
    assert_eq!(env.run(&["renew", "--step", "emails"]).code, 0);
    let to: Vec<String> = smtp.received().iter().map(|m| m.to[0].clone()).collect();
    assert_eq!(
        to,
        ["b", "c", "d", "e", "a"].map(|x| format!("{x}@example.com"))
    );
}

/// Issue 14, point 1: the SMTP server's certificate, made either way (self-signed `CA:TRUE` as
/// `openssl req -x509` makes it, or a leaf signed by a test CA), is trusted when `[smtp] ca_file`
/// holds it (or its CA), over STARTTLS and implicit TLS, for the right name only; `doctor` says
/// the same as `renew`.
#[test]
fn smtp_tls_trusts_a_pinned_self_signed_certificate_and_a_test_ca() {
    use crm_jobs::sandbox::smtp::CertStyle;
    for style in [CertStyle::SelfSigned, CertStyle::SignedByTestCa] {
        for mode in ["starttls", "tls"] {
            let env = Env::new();
            let smtp = &env.sandbox.smtp;
            smtp.set_certificate(style).unwrap();
            smtp.set_require_tls(true);
            smtp.set_implicit_tls(mode == "tls");
            set_key(&env, "smtp", "tls", &format!("\"{mode}\""));
            subscriptions(&env, &[("ended", "active", "2025-11-10T14:00:00Z", "")]);
            let case = format!("{style:?} over {mode}");
            // The system's CAs do not know it.
            let refused = env.run(&["renew"]);
            assert_eq!(refused.code, 3, "{case}: {refused:?}");
            assert!(
                refused.stderr.contains("the SMTP server `127.0.0.1` cannot be used: the TLS handshake failed: invalid peer certificate"),
                "{case}: {refused:?}"
            );
            // Pinned (or its CA) in `[smtp] ca_file`, but for another name: refused.
            std::fs::write(env.path("smtp.pem"), smtp.certificate_pem()).unwrap();
            let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
            let with = |name: &str| {
                config.replacen(
                    "[smtp]\n",
                    &format!(
                        "[smtp]\nca_file = \"{}\"\ntls_server_name = \"{name}\"\n",
                        env.path("smtp.pem").display()
                    ),
                    1,
                )
            };
            std::fs::write(env.path("config.toml"), with("mail.example.com")).unwrap();
            let wrong = env.run(&["renew", "--step", "emails"]);
            assert_eq!(wrong.code, 3, "{case}: {wrong:?}");
            let not_for_name = r#"the SMTP server `127.0.0.1` cannot be used: the TLS handshake failed: invalid peer certificate: certificate not valid for name "mail.example.com"; certificate is only valid for IpAddress(127.0.0.1) or DnsName("localhost")"#;
            assert!(wrong.stderr.contains(not_for_name), "{case}: {wrong:?}");
            let doctor = env.run(&["doctor"]);
            assert!(
                doctor
                    .stdout
                    .contains(&format!("fail  smtp         {not_for_name}")),
                "{case}: {doctor:?}"
            );
            assert!(smtp.received().is_empty());
            // The right name: doctor says so, and the email goes, under TLS.
            std::fs::write(env.path("config.toml"), with("localhost")).unwrap();
            let doctor = env.run(&["doctor"]);
            assert!(
                doctor.stdout.contains(&format!(
                    "ok    smtp         `127.0.0.1:{}` answers (EHLO, TLS `{mode}`, AUTH when a user is set)",
                    smtp.addr().port()
                )),
                "{case}: {doctor:?}"
            );
            let out = env.run(&["renew", "--step", "emails"]);
            assert_eq!(out.code, 0, "{case}: {out:?}");
            let got = smtp.received();
            assert_eq!(got.len(), 1, "{case}");
            assert!(got[0].tls, "{case}");
        }
    }
}

/// The kinds of the open incidents.
fn open_incidents(env: &Env) -> Vec<String> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT job || ':' || kind FROM incidents WHERE cleared_at IS NULL ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Issue 14, point 5: credentials refused by the SMTP server or by Stripe are a configuration
/// failure: exit 78 for both (not 3, which the systemd units count as success), the run
/// `failed`, an alert at once, and the outbox kept for when they are fixed.
#[test]
fn refused_credentials_are_a_configuration_failure_with_an_alert_and_the_outbox_kept() {
    let env = Env::new();
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[alerts]\nto = \"ops@example.com\"\n\n{config}"),
    )
    .unwrap();
    subscriptions(&env, &[("ended", "active", "2025-11-10T14:00:00Z", "")]);
    let out = env
        .cmd(&["renew"])
        .env("CRM_JOBS_SMTP_PASSWORD", "errada")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("error: the SMTP server `127.0.0.1` refused the credentials of `[smtp] user` `sandbox` (permanent error (535): 5.7.8 Authentication credentials invalid): check `CRM_JOBS_SMTP_PASSWORD` (or `[smtp] password_file`) and `[smtp] user`; 1 email(s) wait for the next run (the state changes stand)"),
        "{stderr}"
    );
    assert!(!stderr.contains("errada"), "the password is never shown");
    let status: String =
        env.query("SELECT status FROM runs WHERE job = 'renew' ORDER BY id DESC LIMIT 1");
    assert_eq!(status, "failed");
    assert_eq!(
        open_incidents(&env),
        vec!["renew:smtp_credentials".to_string()]
    );
    // The expiry stands; its email and the alert wait (the alert cannot go either).
    let subscription: String = env.query("SELECT status FROM subscriptions");
    assert_eq!(subscription, "inactive");
    assert_eq!(
        outbox(&env),
        vec![
            (
                "expired".into(),
                "ended@example.com".into(),
                "pending".into()
            ),
            ("alert".into(), "ops@example.com".into(), "pending".into()),
        ]
    );
    assert!(env.sandbox.smtp.received().is_empty());
    // Fixed: everything queued goes, and the alert clears.
    let out = env.run(&["renew", "--step", "emails"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(open_incidents(&env).is_empty());
    let subjects: Vec<String> = env
        .sandbox
        .smtp
        .received()
        .iter()
        .map(|m| m.to[0].clone())
        .collect();
    assert_eq!(
        subjects,
        ["ended@example.com", "ops@example.com", "ops@example.com"],
        "the expiry, the alert, its clearing"
    );

    // Stripe refusing the key: the same exit, its own alert, sent at once.
    let env = Env::new();
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("[alerts]\nto = \"ops@example.com\"\n\n{config}"),
    )
    .unwrap();
    subscriptions(
        &env,
        &[(
            "renews",
            "active",
            "2025-11-10T20:00:00Z",
            r#", "gateway": "stripe", "gateway_subscription_id": "sub_1""#,
        )],
    );
    let out = env
        .cmd(&["renew"])
        .env("CRM_JOBS_STRIPE_SECRET_KEY", "sk_wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(
        open_incidents(&env),
        vec!["renew:stripe_credentials".to_string()]
    );
    let alert = env.sandbox.smtp.received();
    assert_eq!(alert.len(), 1, "{stderr}");
    assert_eq!(alert[0].to, vec!["ops@example.com".to_string()]);
}

/// Every row of the subscription app's tables, as text.
fn app_rows(env: &Env) -> Vec<String> {
    let db = env.db();
    let mut rows = Vec::new();
    for table in ["plans", "users", "subscriptions", "sessions", "payments"] {
        let mut stmt = db
            .prepare(&format!("SELECT * FROM {table} ORDER BY id"))
            .unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let values: Vec<String> = (0..n)
                .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect();
            rows.push(format!("{table}: {}", values.join(", ")));
        }
    }
    rows
}

/// Imports the app's `mongoexport` files, one collection each, in the order they name each
/// other.
fn import_mongoexport(env: &Env) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mongo");
    for (collection, n) in [
        ("plans", 2),
        ("users", 11),
        ("subscriptions", 11),
        ("sessions", 2),
        ("payments", 5),
    ] {
        let file = dir.join(format!("{collection}.json"));
        let out = env.run(&[
            "import",
            "subscriptions",
            file.to_str().unwrap(),
            "--collection",
            collection,
        ]);
        assert_eq!(out.code, 0, "{collection}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "imported {n} record(s) from `{}`; 0 line(s) skipped",
                file.display()
            )),
            "{out:?}"
        );
    }
}

/// Issue 14, point 4: the app's data as `mongoexport` writes it (Extended JSON, one collection
/// per file) imports as it is; what the app had warned (`expiration_warning_sent`) or deleted
/// (`flag_del`) is not warned nor touched, a `failed` payment is a payment, and importing the
/// same export again changes nothing.
#[test]
fn the_apps_mongoexport_imports_as_it_is_and_only_the_due_are_warned() {
    let env = Env::new();
    import_mongoexport(&env);
    let price: i64 = env
        .query("SELECT price_centavos FROM plans WHERE external_id = '65f100010000000000000001'");
    assert_eq!(
        price, 4990,
        "`{{\"$numberDecimal\": \"49.90\"}}` is R$ 49,90"
    );
    let (end, warned): (String, Option<String>) = env
        .db()
        .query_row(
            "SELECT current_period_end, warned_period_end FROM subscriptions WHERE external_id = '65f100030000000000000003'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        warned.as_deref(),
        Some(end.as_str()),
        "warned by the app for this period"
    );
    let failed: String =
        env.query("SELECT status FROM payments WHERE external_id = '65f100050000000000000002'");
    assert_eq!(failed, "failed");
    let deleted: String = env.query(
        "SELECT group_concat(external_id) FROM (SELECT external_id FROM subscriptions WHERE deleted_at IS NOT NULL
         UNION ALL SELECT external_id FROM users WHERE deleted_at IS NOT NULL ORDER BY 1)",
    );
    assert_eq!(
        deleted,
        "65f10002000000000000000b,65f100030000000000000009,65f10003000000000000000a"
    );
    // The same export again: nothing changes.
    let before = app_rows(&env);
    import_mongoexport(&env);
    assert_eq!(app_rows(&env), before);

    let out = env.run(&["renew", "--step", "expiring"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        outbox(&env),
        vec![
            ("expiring".into(), "u1@example.com".into(), "pending".into()),
            ("expiring".into(), "u2@example.com".into(), "pending".into()),
        ],
        "2 due; not the 6 the app warned, the 2 it deleted, nor the deleted user's"
    );
    // Again after the run: the import does not undo the warnings, nor anything else.
    let before = app_rows(&env);
    import_mongoexport(&env);
    assert_eq!(app_rows(&env), before);
    assert_eq!(env.run(&["renew", "--step", "expiring"]).code, 0);
    assert_eq!(outbox(&env).len(), 2);

    // `cleanup` leaves what the app deleted alone.
    assert_eq!(
        env.run(&["cleanup", "--only", "sessions", "--only", "payments"])
            .code,
        0
    );
    let audits: String = env.query(
        "SELECT group_concat(x) FROM (SELECT a.entity || ':' || a.action || ':' || coalesce(s.external_id, p.external_id) AS x
         FROM audit_log a LEFT JOIN sessions s ON a.entity = 'session' AND s.id = a.entity_id
         LEFT JOIN payments p ON a.entity = 'payment' AND p.id = a.entity_id
         WHERE a.entity IN ('session', 'payment') ORDER BY x)",
    );
    assert_eq!(
        audits,
        "payment:cancelled:65f100050000000000000003,session:soft_deleted:65f100040000000000000001"
    );

    // Without `--collection`, a document's own `type` is read as the record type.
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mongo/payments.json");
    let out = env.run(&["import", "subscriptions", file.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}:1: `type` = `pix` is not one of plan, user, subscription, session, payment; line skipped",
            file.display()
        )),
        "{out:?}"
    );
}

/// Issue 14, point 4: `mongoexport --jsonArray` (here pretty-printed) imports too; a bad
/// document is named by its place in the array.
#[test]
fn a_mongoexport_array_imports_and_names_a_bad_document() {
    let env = Env::new();
    let file = env.path("plans.json");
    std::fs::write(
        &file,
        r#"[{
  "_id": {"$oid": "65f100010000000000000001"},
  "name": "Pro",
  "price": {"$numberDecimal": "49.90"}
},
{
  "_id": {"$oid": "65f100010000000000000002"},
  "name": "Quebrado",
  "price": {"$numberDecimal": "49.999"}
}]
"#,
    )
    .unwrap();
    let out = env.run(&[
        "import",
        "subscriptions",
        file.to_str().unwrap(),
        "--collection",
        "plans",
    ]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}: document 2: `price` = `49.999` has a fraction of a centavo; document skipped",
            file.display()
        )),
        "{out:?}"
    );
    let plans: String =
        env.query("SELECT group_concat(external_id || '=' || price_centavos) FROM plans");
    assert_eq!(plans, "65f100010000000000000001=4990");
}
