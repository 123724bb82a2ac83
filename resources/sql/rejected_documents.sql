-- Rejected documents: which input documents did ingest refuse, and why?
-- Rows of the rejects table written by the ingest job (empty text, oversized document,
-- missing id...), newest first; row_json is the offending row, cut to 300 characters.
-- Parameters:
--   :run_id (default '')  one ingest run; '' means every ingest run
-- Example: sparkrag-sql --file resources/sql/rejected_documents.sql --param run_id=<run>
SELECT run_id,
       row_key AS doc_id,
       `column`,
       reason,
       source_table,
       substr(row_json, 1, 300) AS row_json,
       created_at
FROM rejects
WHERE job = 'ingest'
  AND (nullif(:run_id, '') IS NULL OR run_id = :run_id)
ORDER BY created_at DESC, doc_id
