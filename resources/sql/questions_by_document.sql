-- Questions by document: which questions got context from a given document?
-- One row per question of the run whose retrieved contexts include a chunk of :doc_id,
-- with the best rank and distance of that document's chunks and how many were retrieved.
-- Useful before changing or deleting a document: these answers depend on it.
-- Parameters:
--   :doc_id               the document id (the doc_id column of the documents table); required
--   :run_id (default '')  the answer run; '' means the latest one (newest created_at in answers)
-- Example: sparkrag-sql --file resources/sql/questions_by_document.sql --param 'doc_id=Beyoncé#0'
WITH target AS (
  SELECT coalesce(nullif(:run_id, ''), max_by(run_id, created_at)) AS run_id FROM answers
)
SELECT a.run_id,
       a.question_id,
       a.question,
       a.answer,
       a.abstained,
       min(ctx.rank) AS best_rank,
       round(min(ctx.distance), 4) AS best_distance,
       count(*) AS chunks_from_document,
       sort_array(collect_list(ctx.chunk_id)) AS chunk_ids
FROM answers a JOIN target t ON a.run_id = t.run_id
LATERAL VIEW explode(a.contexts) contexts_view AS ctx
WHERE ctx.doc_id = :doc_id
GROUP BY a.run_id, a.question_id, a.question, a.answer, a.abstained
ORDER BY best_rank, best_distance, a.question_id
