-- record_transitions (tests only, never a migration): logs every row PostgreSQL writes
-- to requests, so tests/integration/test_sql_transitions.py can hold each write to the
-- state table (fusillade/core/transitions.py).
-- transition_log: one row per inserted or updated request row: the states before and
-- after, the columns whose value changed (IS DISTINCT FROM), and the row as it was.
-- Written in the writing transaction: a statement that is rolled back logs nothing.
CREATE TABLE transition_log (
    seq        bigserial PRIMARY KEY,
    op         text      NOT NULL,
    request_id uuid      NOT NULL,
    old_state  text      NULL,
    new_state  text      NOT NULL,
    changed    text[]    NOT NULL,
    old_row    jsonb     NULL,
    new_row    jsonb     NOT NULL
);

CREATE FUNCTION record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO transition_log (op, request_id, new_state, changed, new_row)
        VALUES (TG_OP, NEW.id, NEW.state, '{}', to_jsonb(NEW));
    ELSE
        SELECT coalesce(array_agg(n.key ORDER BY n.key), '{}')
        INTO changed
        FROM jsonb_each(to_jsonb(NEW)) n
        JOIN jsonb_each(to_jsonb(OLD)) o USING (key)
        WHERE n.value IS DISTINCT FROM o.value;
        INSERT INTO transition_log (op, request_id, old_state, new_state, changed, old_row,
                                    new_row)
        VALUES (TG_OP, NEW.id, OLD.state, NEW.state, changed, to_jsonb(OLD), to_jsonb(NEW));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER requests_record_insert AFTER INSERT ON requests
    FOR EACH ROW EXECUTE FUNCTION record_transition();
CREATE TRIGGER requests_record_update AFTER UPDATE ON requests
    FOR EACH ROW EXECUTE FUNCTION record_transition();
