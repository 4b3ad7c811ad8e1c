-- begin: open the transaction of one repository call and give it the session settings,
-- in one round trip (the simple query protocol runs the three statements together, in
-- place of the bare BEGIN a driver would send). SET LOCAL lasts until COMMIT or
-- ROLLBACK, so it works through PgBouncer in session and in transaction pooling, where
-- a startup `options=-c ...` parameter is refused or dropped (docs/deployment.md).
-- Parameter: the statement timeout in milliseconds, composed in once at start-up as a
-- psycopg.sql.Literal (SET takes no bind parameters).
BEGIN;
SET LOCAL statement_timeout = {statement_timeout};
SET LOCAL jit = off
