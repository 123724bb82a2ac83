-- Unanswered questions: which questions did an answer run leave without an answer, and why?
-- One row per question of the run whose answer abstained, failed (error set) or came back
-- empty. closest_distance is the best retrieved context's distance: a high value suggests
-- the corpus lacks the answer, a low one that the generator was too cautious.
-- (Answers are merged on question_id and run_id: one row per question and run; --resume
-- replaces a failed row with its retry.)
-- Parameters:
--   :run_id (default '')  the answer run; '' means the latest one (newest created_at in answers)
-- Example: sparkrag-sql --file resources/sql/unanswered_questions.sql --param run_id=<run>
WITH target AS (
  SELECT coalesce(nullif(:run_id, ''), max_by(run_id, created_at)) AS run_id FROM answers
)
SELECT a.run_id,
       a.question_id,
       a.question,
       CASE WHEN a.error IS NOT NULL THEN 'failed'
            WHEN coalesce(a.abstained, false) THEN 'abstained'
            ELSE 'empty answer' END AS reason,
       a.answer,
       a.error,
       CASE WHEN a.contexts IS NULL THEN 0 ELSE size(a.contexts) END AS n_contexts,
       array_min(transform(a.contexts, c -> c.distance)) AS closest_distance
FROM answers a JOIN target t ON a.run_id = t.run_id
WHERE a.error IS NOT NULL OR coalesce(a.abstained, false) OR a.answer IS NULL OR trim(a.answer) = ''
ORDER BY reason, a.question_id
