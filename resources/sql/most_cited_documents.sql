-- Most cited documents: which documents supply the contexts of an answer run?
-- Explodes each answered or abstained question's contexts (failed rows excluded).
-- citations counts contexts (two chunks of one document for one question count twice);
-- questions counts distinct questions; answered_questions those that did not abstain;
-- top1_citations the contexts ranked first.
-- Parameters:
--   :run_id (default '')  the answer run; '' means the latest one (newest created_at in answers)
--   :top (default '20')   how many documents to return
-- Example: sparkrag-sql --file resources/sql/most_cited_documents.sql --param top=10
WITH target AS (
  SELECT coalesce(nullif(:run_id, ''), max_by(run_id, created_at)) AS run_id FROM answers
),
cited AS (
  SELECT a.question_id, coalesce(a.abstained, false) AS abstained,
         ctx.doc_id, ctx.title, ctx.rank, ctx.distance
  FROM answers a JOIN target t ON a.run_id = t.run_id
  LATERAL VIEW explode(a.contexts) contexts_view AS ctx
  WHERE a.error IS NULL
)
SELECT doc_id,
       max(title) AS title,
       count(*) AS citations,
       count(DISTINCT question_id) AS questions,
       count(DISTINCT CASE WHEN NOT abstained THEN question_id END) AS answered_questions,
       count_if(rank = 1) AS top1_citations,
       round(avg(rank), 2) AS mean_rank,
       round(min(distance), 4) AS min_distance
FROM cited
GROUP BY doc_id
ORDER BY citations DESC, questions DESC, doc_id
LIMIT CAST(:top AS INT)
