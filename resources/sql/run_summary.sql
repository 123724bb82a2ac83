-- Run summary: how did each answer run go, how fast, and how many tokens did it use?
-- One row per answer run, newest first: question outcomes, abstention_rate (abstained /
-- questions that did not fail), latency percentiles (percentile_approx, per question,
-- retrieval included) and token totals. status, started_at and finished_at come from the
-- runs table: a resumed run has several runs rows; status is the latest one's (NULL when
-- the run wrote no runs row).
-- Parameters: none.
-- Example: sparkrag-sql --file resources/sql/run_summary.sql
WITH outcomes AS (
  SELECT run_id,
         max(model_id) AS model_id,
         min(created_at) AS first_answer_at,
         count(*) AS questions,
         count_if(error IS NULL AND NOT coalesce(abstained, false)) AS answered,
         count_if(error IS NULL AND coalesce(abstained, false)) AS abstained,
         count_if(error IS NOT NULL) AS failed,
         percentile_approx(latency_ms, 0.5) AS latency_p50_ms,
         percentile_approx(latency_ms, 0.95) AS latency_p95_ms,
         sum(prompt_tokens) AS prompt_tokens,
         sum(completion_tokens) AS completion_tokens
  FROM answers
  GROUP BY run_id
),
answer_runs AS (
  SELECT run_id,
         max_by(status, finished_at) AS status,
         min(started_at) AS started_at,
         max(finished_at) AS finished_at
  FROM runs
  WHERE job = 'answer'
  GROUP BY run_id
)
SELECT o.run_id,
       r.status,
       o.model_id,
       r.started_at,
       r.finished_at,
       o.questions,
       o.answered,
       o.abstained,
       o.failed,
       round(try_divide(o.abstained, o.questions - o.failed), 4) AS abstention_rate,
       o.latency_p50_ms,
       o.latency_p95_ms,
       o.prompt_tokens,
       o.completion_tokens,
       o.prompt_tokens + o.completion_tokens AS total_tokens
FROM outcomes o
LEFT JOIN answer_runs r ON r.run_id = o.run_id
ORDER BY coalesce(r.started_at, o.first_answer_at) DESC, o.run_id
