-- 0012: a run removed by `cleanup` (rule `runs`) empties the `last_run_id` of the invoices and
-- the `run_id` of the boletos that name it (ON DELETE SET NULL), and SQLite finds them by these
-- columns. Without an index, each run removed read every invoice and every boleto: 2,500 runs
-- among 10,000 invoices took 2.5 s, 250,000 among a million would have taken days. Only the
-- rows that name a run are indexed (an invoice never fetched names none).
CREATE INDEX invoices_last_run ON invoices (last_run_id) WHERE last_run_id IS NOT NULL;
CREATE INDEX boletos_run ON boletos (run_id) WHERE run_id IS NOT NULL;
