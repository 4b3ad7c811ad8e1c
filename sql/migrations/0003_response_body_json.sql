-- 0003_response_body_json: mark response bodies stored as compact strict JSON.
--
-- The daemon parses every 2xx body anyway (for its token usage). When the body is strict
-- JSON it stores it re-serialised compactly, on one line, and sets this flag, so an output
-- file embeds the stored text as it is instead of parsing and re-serialising each body on
-- every download (the cost that dominated downloads: docs/performance.md, P5).
-- false: the body is stored as received; readers parse it to decide how to embed it.
-- A constant default: adding the column rewrites nothing.

ALTER TABLE requests ADD COLUMN response_body_json boolean NOT NULL DEFAULT false;
