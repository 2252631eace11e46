-- 0002: Nio contracts and the ten expected invoices of each (DOMAIN.md), with the tracking of
-- every fetch attempt. Host applications may insert contracts directly; they must then insert
-- the ten invoice rows too (or run `crm-jobs import contracts`, which does both).
-- Money is integer centavos. Business dates (installation, due dates) are YYYY-MM-DD in
-- America/Sao_Paulo; instants are RFC 3339 UTC.

CREATE TABLE contracts (
    id              INTEGER PRIMARY KEY,
    contract_number TEXT    NOT NULL UNIQUE,        -- the operator's contract number
    service_order   TEXT,                           -- e.g. 'OS-12345'
    cpf             TEXT    NOT NULL,               -- 11 digits; validated again before every query
    customer_name   TEXT    NOT NULL,
    installed_on    TEXT    NOT NULL,               -- YYYY-MM-DD
    safra           TEXT    NOT NULL,               -- installation month YYYY-MM unless imported otherwise
    last_fetch_at   TEXT,                           -- last time the Nio API was asked for this contract
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);

CREATE INDEX contracts_safra ON contracts (safra);
CREATE INDEX contracts_fair ON contracts (last_fetch_at);

CREATE TABLE invoices (
    id                  INTEGER PRIMARY KEY,
    contract_id         INTEGER NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    number              INTEGER NOT NULL CHECK (number BETWEEN 1 AND 10),
    due_date            TEXT,                       -- expected due date YYYY-MM-DD
    due_date_source     TEXT    NOT NULL DEFAULT 'computed' CHECK (due_date_source IN ('computed', 'imported')),
    available_from      TEXT,                       -- first day the invoice can exist at Nio
    expected_amount_centavos INTEGER,               -- from the operator's spreadsheet, if given
    -- What Nio answered for the matched invoice.
    amount_centavos     INTEGER,
    payment_status      TEXT    NOT NULL DEFAULT 'unknown'
                        CHECK (payment_status IN ('unknown', 'open', 'paid')),
                        -- open: listed by Nio; paid: was listed, then vanished (Nio lists only open debts), or set by the host
    paid_detected_at    TEXT,
    nio_debt_id         TEXT,
    nio_invoice_id      TEXT,
    nio_status          TEXT,                       -- Nio's own status text, as answered
    reference_month     TEXT,                       -- YYYYMM as answered
    barcode             TEXT,                       -- linha digitável, check digits verified
    pix_code            TEXT,                       -- PIX copia e cola, CRC verified
    pdf_path            TEXT,                       -- absolute path of the saved PDF
    pdf_sha256          TEXT,
    match_outcome       TEXT CHECK (match_outcome IN ('matched', 'ambiguous', 'no_match', 'value_mismatch', 'no_due_date')),
    match_detail        TEXT,                       -- human explanation of the outcome
    -- Tracking of fetch attempts.
    fetch_origin        TEXT,                       -- manual | automatic | safra | individual | retry
    fetch_status        TEXT    NOT NULL DEFAULT 'pending'
                        CHECK (fetch_status IN ('pending', 'success', 'error', 'partial', 'gave_up')),
                        -- partial: the answer was recorded but a part failed (PDF, bad PIX or barcode)
    error_kind          TEXT CHECK (error_kind IN ('transient', 'permanent')),
    attempts            INTEGER NOT NULL DEFAULT 0, -- every attempt ever
    failed_attempts     INTEGER NOT NULL DEFAULT 0, -- consecutive failed attempts; reset by a success
    last_attempt_at     TEXT,
    last_duration_ms    INTEGER,
    last_error          TEXT,
    last_run_id         INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    UNIQUE (contract_id, number)
);

CREATE INDEX invoices_status ON invoices (fetch_status, error_kind);

-- Cache of the Nio bootstrap across runs. Both columns are ciphertext: `params` exactly as the
-- site served it, `session` sealed the same way (AES-256-CBC, key = SHA-256 of the passphrase).
CREATE TABLE nio_session (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    params          TEXT    NOT NULL,
    session         TEXT,
    obtained_at     TEXT    NOT NULL
);
