-- 0007_result_file_sizes: the sizes of a batch's output and error files, once known.
--
-- Output and error files are views of a batch's requests, so their size is only final
-- once the batch's counts are frozen. It is computed on the first read of either file
-- after that (one pass over the results, formatted as a download formats them) and kept
-- here with the key it is valid for: the batch's version (a retry bumps it) and its
-- frozen completed count (a late success repaired into a frozen batch moves it). A size
-- whose key differs from the row's current version and frozen_completed is stale and is
-- computed again. All null until first computed; adding nullable columns rewrites nothing.

ALTER TABLE batches
    ADD COLUMN output_bytes    bigint  NULL CHECK (output_bytes >= 0),
    ADD COLUMN error_bytes     bigint  NULL CHECK (error_bytes >= 0),
    ADD COLUMN sized_version   integer NULL,
    ADD COLUMN sized_completed integer NULL;
