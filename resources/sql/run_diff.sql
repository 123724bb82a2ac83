-- Run diff: what changed between an answer run and the previous one?
-- The previous run is the latest answer run with a 'succeeded' row in the runs table that
-- was created before :run_id. One row per question whose outcome changed: new question,
-- dropped question, now fails, now succeeds, now abstains, now answered, answer changed.
-- Every row repeats the run-level abstention counts of both runs and their difference
-- (abstention_delta > 0: the new run abstains more). No rows: nothing changed.
-- Parameters:
--   :run_id (default '')  the run to inspect; '' means the latest answer run in the runs table
-- Example: sparkrag-sql --file resources/sql/run_diff.sql --param run_id=<run>
WITH answer_runs AS (
  SELECT run_id,
         min(created_at) AS created_at,
         bool_or(status = 'succeeded') AS succeeded
  FROM runs
  WHERE job = 'answer'
  GROUP BY run_id
),
pair AS (
  SELECT c.run_id,
         max_by(r.run_id, r.created_at) FILTER (WHERE r.succeeded AND r.created_at < c.created_at) AS previous_run_id
  FROM answer_runs c CROSS JOIN answer_runs r
  WHERE c.run_id = coalesce(nullif(:run_id, ''), (SELECT max_by(run_id, created_at) FROM answer_runs))
  GROUP BY c.run_id
),
both_runs AS (
  SELECT a.question_id, a.question, a.answer, a.abstained, a.error,
         a.run_id = p.run_id AS is_current
  FROM answers a JOIN pair p ON a.run_id = p.run_id OR a.run_id = p.previous_run_id
),
paired AS (
  SELECT question_id,
         max(question) AS question,
         count_if(is_current) > 0 AS in_current,
         count_if(NOT is_current) > 0 AS in_previous,
         max(answer) FILTER (WHERE is_current) AS answer,
         max(answer) FILTER (WHERE NOT is_current) AS previous_answer,
         bool_or(abstained) FILTER (WHERE is_current) AS abstained,
         bool_or(abstained) FILTER (WHERE NOT is_current) AS previous_abstained,
         max(error) FILTER (WHERE is_current) AS error,
         max(error) FILTER (WHERE NOT is_current) AS previous_error
  FROM both_runs
  GROUP BY question_id
),
changes AS (
  SELECT *,
         CASE WHEN NOT in_previous THEN 'new question'
              WHEN NOT in_current THEN 'dropped question'
              WHEN previous_error IS NULL AND error IS NOT NULL THEN 'now fails'
              WHEN previous_error IS NOT NULL AND error IS NULL THEN 'now succeeds'
              WHEN previous_error IS NOT NULL THEN NULL
              WHEN NOT coalesce(previous_abstained, false) AND coalesce(abstained, false) THEN 'now abstains'
              WHEN coalesce(previous_abstained, false) AND NOT coalesce(abstained, false) THEN 'now answered'
              WHEN previous_answer IS DISTINCT FROM answer THEN 'answer changed'
         END AS change,
         count_if(coalesce(previous_abstained, false)) OVER () AS abstained_before,
         count_if(coalesce(abstained, false)) OVER () AS abstained_now
  FROM paired
)
SELECT p.run_id,
       p.previous_run_id,
       c.question_id,
       c.question,
       c.change,
       c.previous_answer,
       c.answer,
       c.previous_abstained,
       c.abstained,
       c.error,
       c.abstained_before,
       c.abstained_now,
       c.abstained_now - c.abstained_before AS abstention_delta
FROM changes c CROSS JOIN pair p
WHERE c.change IS NOT NULL
ORDER BY c.change, c.question_id
