-- 0010: the subscription app's own data, as `mongoexport` gives it (issue 14). The app
-- soft-deletes any record (`flag_del`), users, plans and payments too, and a payment may have
-- `failed`. A soft-deleted user gets no email and no change from `renew`; a soft-deleted payment
-- is left alone by `cleanup`; a soft-deleted plan stays for the subscriptions that name it.
-- SQLite cannot change a CHECK constraint in place, so `payments` is rebuilt with the same rows
-- and ids (no table refers to it).

ALTER TABLE users ADD COLUMN deleted_at TEXT;   -- soft-deleted in the host app
ALTER TABLE plans ADD COLUMN deleted_at TEXT;   -- soft-deleted in the host app

CREATE TABLE payments_0010 (
    id              INTEGER PRIMARY KEY,
    external_id     TEXT    NOT NULL UNIQUE,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    subscription_id INTEGER REFERENCES subscriptions (id),
    amount_centavos INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'failed', 'cancelled', 'refunded')),
    created_at      TEXT    NOT NULL,
    updated_at      TEXT,
    deleted_at      TEXT                            -- soft-deleted in the host app
);

INSERT INTO payments_0010 (id, external_id, user_id, subscription_id, amount_centavos, status, created_at, updated_at)
SELECT id, external_id, user_id, subscription_id, amount_centavos, status, created_at, updated_at FROM payments;

DROP TABLE payments;
ALTER TABLE payments_0010 RENAME TO payments;
