-- lift_statement_timeout: no statement timeout for the rest of this transaction.
-- Used around a file's COPY, whose duration grows with the file (a million lines take
-- longer than the 30 s every other statement is allowed); SET LOCAL ends at commit.
SET LOCAL statement_timeout = 0
