"""How resources/sample was cut from squad2-train10 (SQuAD 2.0, CC BY-SA 4.0). Kept for provenance.

Run from the repo root: python resources/sample/make_sample.py <squad2-train10 folder>
"""

import collections
import json
import sys
from pathlib import Path

DOCS_PER_ARTICLE = 25
ANSWERABLE_PER_ARTICLE = 5
UNANSWERABLE_PER_ARTICLE = 2


def main(src: str) -> None:
    src_dir, out = Path(src), Path(__file__).parent
    docs = [json.loads(line) for line in open(src_dir / "documents.jsonl", encoding="utf-8")]
    questions = [json.loads(line) for line in open(src_dir / "questions.jsonl", encoding="utf-8")]
    per_article = collections.defaultdict(list)
    for doc in docs:
        if len(per_article[doc["title"]]) < DOCS_PER_ARTICLE:
            per_article[doc["title"]].append(doc)
    kept = {d["doc_id"] for ds in per_article.values() for d in ds}
    picked, counts = [], collections.Counter()
    for q in questions:
        if q["doc_id"] not in kept:
            continue
        kind = "no" if q["is_impossible"] else "yes"
        limit = UNANSWERABLE_PER_ARTICLE if kind == "no" else ANSWERABLE_PER_ARTICLE
        if counts[(q["title"], kind)] < limit:
            counts[(q["title"], kind)] += 1
            picked.append(q)
    with open(out / "documents.jsonl", "w", encoding="utf-8") as fh:
        for ds in per_article.values():
            for d in ds:
                fh.write(json.dumps({**d, "source": "wikipedia", "lang": "en"}, ensure_ascii=False) + "\n")
    with open(out / "questions.jsonl", "w", encoding="utf-8") as fh:
        for q in picked:
            fh.write(json.dumps(q, ensure_ascii=False) + "\n")
    print(len(kept), "documents,", len(picked), "questions")


if __name__ == "__main__":
    main(sys.argv[1])
