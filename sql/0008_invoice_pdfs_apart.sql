-- 0008: an invoice's PDF is tracked apart from its lookup, and the operator's contract sheet
-- gives expected amounts (issue 12).
--
-- Until now a PDF that could not be saved (an HTML page instead of a PDF, a 5xx) made the invoice
-- `partial` and counted as a failed attempt of the invoice: after `[retry] max_attempts` runs
-- the invoice was `gave_up`, was no longer looked up, and its payment was never seen (an invoice
-- paid at Nio stayed `open`). The PDF now has its own status, attempts and give-up; the
-- invoice's `fetch_status` and `failed_attempts` are about the lookup and its answer only, so the
-- payment keeps being tracked whatever the PDF does. `fetch_status = 'partial'` now means a part
-- of the answer failed its check (barcode, PIX, amount), never the PDF.

ALTER TABLE invoices ADD COLUMN pdf_status TEXT
    CHECK (pdf_status IN ('saved', 'error', 'gave_up'));
    -- NULL: no PDF asked yet (no `pdf_url_template`, or never matched). saved: `pdf_path` holds
    -- it. error: the last try failed (`pdf_error`). gave_up: failed `[retry] max_attempts` times
    -- in a row; not tried again until `crm-jobs retry --reset`.
ALTER TABLE invoices ADD COLUMN pdf_attempts INTEGER NOT NULL DEFAULT 0;        -- every PDF try
ALTER TABLE invoices ADD COLUMN pdf_failed_attempts INTEGER NOT NULL DEFAULT 0; -- consecutive failed tries
ALTER TABLE invoices ADD COLUMN pdf_error TEXT;                                 -- why the last try failed
ALTER TABLE invoices ADD COLUMN pdf_error_kind TEXT
    CHECK (pdf_error_kind IN ('transient', 'permanent'));
    -- transient: retried in the run and by `retry`; permanent (not a PDF, 404, a name the file
    -- system refuses): tried once more by the next `fetch-invoices` only, until the give-up.

-- Where `expected_amount_centavos` came from: `invoice` (`import invoices` `valor`, for that
-- invoice) wins over `contract` (`import contracts` `valor`, for each invoice of the contract).
ALTER TABLE invoices ADD COLUMN expected_amount_source TEXT
    CHECK (expected_amount_source IN ('contract', 'invoice'));

UPDATE invoices SET expected_amount_source = 'invoice' WHERE expected_amount_centavos IS NOT NULL;
UPDATE invoices SET pdf_status = 'saved', pdf_attempts = 1 WHERE pdf_sha256 IS NOT NULL;

-- Invoices that a PDF failure had made `partial` or `gave_up` are looked up again; the failure
-- moves to the PDF's own columns ('PDF not saved: ' was the prefix of such an error).
UPDATE invoices SET
    pdf_status = CASE WHEN fetch_status = 'gave_up' THEN 'gave_up' ELSE 'error' END,
    pdf_attempts = failed_attempts,
    pdf_failed_attempts = failed_attempts,
    pdf_error = substr(last_error, 16),
    pdf_error_kind = error_kind,
    fetch_status = 'success',
    failed_attempts = 0,
    error_kind = NULL,
    last_error = NULL
WHERE fetch_status IN ('partial', 'gave_up') AND last_error LIKE 'PDF not saved: %';
