-- 0007: a run in progress shows how far it got. While a run is `running`, its items_total,
-- items_ok, items_failed and items_skipped are its counts so far (written about once a second;
-- the final counts once it ends), and items_planned the items it set out to take when the job
-- knows them up front (contracts selected, clients of the sales points, subscriptions due).
ALTER TABLE runs ADD COLUMN items_planned INTEGER;
