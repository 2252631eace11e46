-- 0005: SaaS subscriptions (DOMAIN.md "Subscriptions"): users, plans, subscriptions, sessions,
-- payments; an audit log of every change the jobs make; and the outbox of emails, so that a
-- state change, its audit row and its email are written in one transaction and each email is
-- sent at most once knowingly. Host applications may insert users, plans, subscriptions,
-- sessions and payments directly (or use `crm-jobs import subscriptions`). Instants are RFC 3339
-- UTC; money is integer centavos.

CREATE TABLE plans (
    id              INTEGER PRIMARY KEY,
    external_id     TEXT    NOT NULL UNIQUE,        -- the host's id
    name            TEXT    NOT NULL,
    price_centavos  INTEGER NOT NULL,
    billing_cycle   TEXT    NOT NULL DEFAULT 'monthly' CHECK (billing_cycle IN ('monthly', 'quarterly', 'yearly'))
);

CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    external_id     TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    email           TEXT    NOT NULL,
    plan_id         INTEGER REFERENCES plans (id),  -- the plan the user has now; NULL: none
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE subscriptions (
    id                      INTEGER PRIMARY KEY,
    external_id             TEXT    NOT NULL UNIQUE,
    user_id                 INTEGER NOT NULL REFERENCES users (id),
    plan_id                 INTEGER NOT NULL REFERENCES plans (id),
    status                  TEXT    NOT NULL CHECK (status IN ('active', 'inactive', 'canceled', 'past_due', 'trialing')),
    billing_cycle           TEXT    NOT NULL DEFAULT 'monthly',
    current_period_start    TEXT    NOT NULL,
    current_period_end      TEXT    NOT NULL,
    cancel_at_period_end    INTEGER NOT NULL DEFAULT 0,
    gateway                 TEXT    NOT NULL DEFAULT 'stripe' CHECK (gateway IN ('stripe', 'mercadopago', 'paypal', 'manual')),
    gateway_subscription_id TEXT,                   -- e.g. Stripe's 'sub_...'
    warned_period_end       TEXT,                   -- the period end whose expiry warning is queued
    deleted_at              TEXT,
    updated_at              TEXT
);

CREATE INDEX subscriptions_period_end ON subscriptions (status, current_period_end);

CREATE TABLE sessions (
    id              INTEGER PRIMARY KEY,
    external_id     TEXT    NOT NULL UNIQUE,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    expires_at      TEXT    NOT NULL,
    deleted_at      TEXT                            -- soft delete by `cleanup`
);

CREATE TABLE payments (
    id              INTEGER PRIMARY KEY,
    external_id     TEXT    NOT NULL UNIQUE,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    subscription_id INTEGER REFERENCES subscriptions (id),
    amount_centavos INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'cancelled', 'refunded')),
    created_at      TEXT    NOT NULL,
    updated_at      TEXT
);

-- Every change a job makes to the rows above: what, before, after, why.
CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    at              TEXT    NOT NULL,
    run_id          INTEGER,
    entity          TEXT    NOT NULL,               -- 'subscription', 'user', 'session', 'payment'
    entity_id       INTEGER NOT NULL,
    action          TEXT    NOT NULL,               -- e.g. 'expiring_warned', 'expired', 'renewed', 'soft_deleted', 'cancelled'
    before          TEXT,                           -- JSON of the changed fields before
    after           TEXT,                           -- JSON after
    reason          TEXT
);

CREATE INDEX audit_log_entity ON audit_log (entity, entity_id);

-- Emails to send. `dedupe_key` makes queueing idempotent (one warning per period); the
-- Message-ID is stable, so a resend can be recognised by the receiver.
CREATE TABLE email_outbox (
    id              INTEGER PRIMARY KEY,
    dedupe_key      TEXT    NOT NULL UNIQUE,        -- e.g. 'expiring:42:2025-11-13T12:00:00.000Z'
    message_id      TEXT    NOT NULL UNIQUE,        -- '<...@...>'
    kind            TEXT    NOT NULL,               -- expiring | expired | renewed | payment_approved
    subscription_id INTEGER REFERENCES subscriptions (id),
    to_address      TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    text_body       TEXT    NOT NULL,
    html_body       TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'unknown')),
                    -- sending: handed to the SMTP server now; unknown: the connection was lost after
                    -- the message was handed over (it may have been delivered): never resent by itself
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    sent_at         TEXT
);

CREATE INDEX email_outbox_status ON email_outbox (status);
