-- 0003: consórcio boletos (Canopus): sales points with their portal credentials, consultants,
-- clients read from the consultants' spreadsheets, and one row per boleto attempt outcome.
-- Host applications may insert clients directly (CPF as 11 digits) with their consultant and
-- sales point; credentials only through `crm-jobs credentials set` (the password is a Fernet
-- token, never clear text).

CREATE TABLE sales_points (
    id              INTEGER PRIMARY KEY,
    code            TEXT    NOT NULL UNIQUE,        -- e.g. '17.308'
    portal_user     TEXT,                           -- the portal user code as given, e.g. '24627'
    password_token  TEXT,                           -- Fernet token of the portal password
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);

CREATE TABLE consultants (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,        -- as given with --consultor, upper-case
    folder          TEXT    NOT NULL,               -- folder name under [downloads] dir
    created_at      TEXT    NOT NULL
);

CREATE TABLE clients (
    id              INTEGER PRIMARY KEY,
    cpf             TEXT    NOT NULL UNIQUE,        -- 11 digits, check digits verified
    name            TEXT    NOT NULL,               -- without the commission note
    raw_name        TEXT    NOT NULL,               -- as in the spreadsheet
    consultant_id   INTEGER NOT NULL REFERENCES consultants (id),
    sales_point_id  INTEGER REFERENCES sales_points (id),
    quota           TEXT,                           -- 'G/C' column as given
    situacao        TEXT,                           -- em_dia | inadimplente | cancelamento | cancelado | other text
    value_centavos  INTEGER,
    source          TEXT,                           -- 'FILE:ROW' it was last imported from
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);

CREATE INDEX clients_sales_point ON clients (sales_point_id);

-- One row per client, month and quota: the latest outcome. `quota` is '' for outcomes about the
-- client as a whole (cpf_not_found, or an error before a quota was opened).
CREATE TABLE boletos (
    id              INTEGER PRIMARY KEY,
    client_id       INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    year            INTEGER NOT NULL,
    month           INTEGER NOT NULL CHECK (month BETWEEN 1 AND 12),
    quota           TEXT    NOT NULL DEFAULT '',    -- 'GROUP/QUOTA' as the portal shows it
    outcome         TEXT    NOT NULL CHECK (outcome IN ('success', 'cpf_not_found', 'no_boleto', 'error')),
    due_date        TEXT,                           -- YYYY-MM-DD of the installment taken
    value_centavos  INTEGER,
    linha           TEXT,                           -- linha digitável, check digits verified
    pdf_path        TEXT,                           -- absolute path of the saved file
    pdf_sha256      TEXT,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    run_id          INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    attempted_at    TEXT    NOT NULL,
    UNIQUE (client_id, year, month, quota)
);

CREATE INDEX boletos_path ON boletos (pdf_path);
