-- 0014_write_cost: less PostgreSQL work per recorded result (issue 16, item 3; P14, P7):
-- a partial index instead of requests_batch_state, lz4 bodies, request ids in creation order.
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- Why: a request is written three times (created pending, claimed, recorded), and no
-- write can be a HOT update: the claim and the result both change state, which the
-- partial indexes are defined on. So every write adds an entry to every index whose
-- predicate the new row meets, and requests_batch_state (batch_id, state), on every row,
-- took one at each of the three writes: 3 of the 14 index entries of a completed request,
-- and an index as large as the table on every finished row ever kept (P7: 20,000,000).
--
-- Its readers all look for unsettled rows of a batch (cancel and expiry sweeps, the
-- in-flight part of status_models, retry_batch's rows that follow the batch, the
-- settled and purge checks: "state IN ('pending', 'claimed', 'processing')" or a subset)
-- or for every row of a frozen batch (freeze's count, purge), which requests_batch_line
-- (batch_id, line_number) serves as well. Failed and canceled rows of a batch are found
-- through requests_errors. So the index now holds the unsettled rows only: the result
-- write adds nothing to it, and it holds only the rows in progress, whatever the history.
-- Measured (P14, docs/performance.md): 13 index entries instead of 14 per completed
-- request, WAL 2,438 -> 2,332 bytes per request; the P7 plans are unchanged.
--
-- Cost of the migration: CREATE INDEX reads the table once and holds writes to it while
-- it builds (the migrator runs a file in one transaction, so not CONCURRENTLY); the new
-- index exists before the old one is dropped, so no query is left without one.
CREATE INDEX requests_unsettled ON requests (batch_id, state)
    WHERE state IN ('pending', 'claimed', 'processing');
DROP INDEX requests_batch_state;

-- Bodies and messages compressed with lz4 instead of pglz when PostgreSQL compresses them
-- (values over about 2 kB: large LLM answers; the canned answers of P14 are smaller): lz4
-- compresses several times faster at a similar ratio. Only values written from now on;
-- existing ones stay pglz, and both read back the same. A server built without lz4
-- refuses the setting: the columns then keep pglz, and nothing else changes.
DO $$
BEGIN
    ALTER TABLE requests
        ALTER COLUMN response_body SET COMPRESSION lz4,
        ALTER COLUMN response_body_raw SET COMPRESSION lz4,
        ALTER COLUMN failure_message SET COMPRESSION lz4;
    ALTER TABLE request_templates ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not supported by this server: bodies stay pglz-compressed';
END
$$;

-- Request ids in creation order (uuid7: 48 bits of Unix milliseconds, then random bits),
-- as files and batches already are (made by the application). With gen_random_uuid() the
-- rows of one batch are scattered over the whole primary key: a claim of 256 neighbouring
-- rows, and the result flush after it, each read and wrote 256 random leaf pages of it,
-- outside the cache once the table is large (P7 at 20,000,000 rows: a 600 MB primary key,
-- docs/performance.md). Now a batch's rows sit on a few neighbouring leaf pages, and new
-- entries go to the right edge of the index. Nothing reads meaning into a request id (it
-- is only compared for equality and as the last key of an order), so existing random ids
-- and new ordered ones live side by side. PostgreSQL 15 has no uuidv7(): this is the
-- same layout from the version-4 one, with the time in front and the version bits set
-- to 7 (bits 52 and 53, counted from the end of each byte as set_bit does).
CREATE FUNCTION fusillade_uuid7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp())
                                                     * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

ALTER TABLE requests ALTER COLUMN id SET DEFAULT fusillade_uuid7();
