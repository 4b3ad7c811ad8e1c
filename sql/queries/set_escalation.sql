-- set_escalation: stamp the batches found to be missing their deadline, and clear the
-- stamp of those back on course (fusillade.core.deadlines.will_miss decides; the daemon's
-- maintenance sends only changes). Parameters: escalate (uuid[]), clear (uuid[]), now.
-- An escalated batch keeps its first stamp (escalated_at is when it was first found
-- late); an id in both lists is escalated. Locking: the batch rows changed, in id order
-- (several daemons' maintenance may send overlapping lists; one order keeps them from
-- deadlocking).
UPDATE batches b
SET escalated_at = CASE WHEN b.id = ANY (%(escalate)s::uuid[]) THEN %(now)s::timestamptz END
FROM (
    SELECT x.id
    FROM batches x
    WHERE (x.id = ANY (%(escalate)s::uuid[]) AND x.escalated_at IS NULL)
       OR (x.id = ANY (%(clear)s::uuid[]) AND x.escalated_at IS NOT NULL
           AND NOT x.id = ANY (%(escalate)s::uuid[]))
    ORDER BY x.id
    FOR UPDATE
) t
WHERE b.id = t.id
