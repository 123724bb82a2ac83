-- Failed rows: which questions of an answer run raised an error, and in which stage?
-- Every answers row of the run whose error is set. failed_stage is 'retrieve' when the
-- row has no contexts (embedding, search or filtering failed) and 'generate' when it has
-- them (the model failed). Retry them with: sparkrag-answer --run-id <run> --resume
-- Parameters:
--   :run_id (default '')  the answer run; '' means the latest one (newest created_at in answers)
-- Example: sparkrag-sql --file resources/sql/failed_rows.sql --param run_id=<run>
WITH target AS (
  SELECT coalesce(nullif(:run_id, ''), max_by(run_id, created_at)) AS run_id FROM answers
)
SELECT a.run_id,
       a.question_id,
       a.question,
       CASE WHEN a.contexts IS NULL THEN 'retrieve' ELSE 'generate' END AS failed_stage,
       a.error,
       a.model_id,
       a.created_at
FROM answers a JOIN target t ON a.run_id = t.run_id
WHERE a.error IS NOT NULL
ORDER BY a.created_at, a.question_id
