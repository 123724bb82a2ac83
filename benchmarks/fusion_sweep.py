"""Fusion and BM25 settings swept outside Spark on squad2-train10 (issue #16), tuning half vs check half.

The library's own pieces, without Spark or Chroma: chunks from ``sparkrag.chunk.split_texts``
(the ingest's splitter), MiniLM vectors from ``sparkrag.embed`` (cached under ``--cache``),
exact cosine search (what HNSW approximates), ``sparkrag.index.lexical.LexicalIndex`` for BM25 and
``sparkrag.retrieval.fusion`` for fusion, over ``fetch_k`` = 20 candidates per retriever as in the
answer job. The corpus is every paragraph; the questions are split by article
(``squad_eval.article_split``: sorted titles, 1st/3rd/5th... = tune). Settings are chosen
on ``tune`` (the grid's best by recall@1 + recall@5); ``check`` only reports them.

    .venv/bin/python benchmarks/fusion_sweep.py --data /work/shared/data/squad2-train10 --cache /tmp/sweep-cache
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from squad_eval import article_split  # noqa: E402

FETCH_K, TOP = 20, 10


def corpus(data: Path, cache: Path):
    """chunks (ids, doc ids, texts, metadatas), questions, passage and query vectors (cached)."""
    from sparkrag.chunk import chunk_budget, split_texts
    from sparkrag.config import ChunkConfig, EncoderConfig
    from sparkrag.embed import make_encode_fn
    from sparkrag.models import load_tokenizer, resolve_model_path

    docs = [json.loads(line) for line in (data / "documents.jsonl").open(encoding="utf-8")]
    questions = [json.loads(line) for line in (data / "questions.jsonl").open(encoding="utf-8")]
    enc = EncoderConfig()
    tokenizer = load_tokenizer(resolve_model_path(enc.model))
    budget = chunk_budget(tokenizer, encoder=enc, chunking=ChunkConfig())
    split = split_texts([d["text"] for d in docs], tokenizer, budget)
    chunks = [(f"{d['doc_id']}:{c.index}", d["doc_id"], c.text, {"doc_id": d["doc_id"], "title": d["title"]})
              for d, cs in zip(docs, split) for c in cs]
    cache.mkdir(parents=True, exist_ok=True)
    vectors = {}
    for role, texts in (("passage", [c[2] for c in chunks]), ("query", [q["question"] for q in questions])):
        path = cache / f"{role}-{len(texts)}.npy"
        if not path.exists():
            np.save(path, make_encode_fn(enc, role=role)()(texts))
        vectors[role] = np.load(path)
    return chunks, questions, vectors["passage"], vectors["query"]


def lists_of(chunks, questions, pv, qv, lexical_cfg):
    """Per question: dense [(chunk_id, -cosine distance)] and lexical [(chunk_id, BM25)], FETCH_K each."""
    from sparkrag.index.lexical import LexicalIndex

    ids = [c[0] for c in chunks]
    sims = qv @ pv.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :FETCH_K]
    dense = [[(ids[j], float(sims[i, j]) - 1.0) for j in row] for i, row in enumerate(top)]
    index = LexicalIndex.build(ids, [c[2] for c in chunks], [c[3] for c in chunks], lexical_cfg)
    start = time.perf_counter()
    res = index.query([q["question"] for q in questions], n_results=FETCH_K)
    lexical_s = time.perf_counter() - start
    return dense, [list(zip(i, s)) for i, s in zip(res["ids"], res["scores"])], lexical_s


def score(ranked, doc_of, gold, mask) -> list[float]:
    """recall@1/5/10 and MRR of the gold document among the first TOP chunks."""
    ranks = []
    for cids, g, keep in zip(ranked, gold, mask):
        if keep:
            docs = [doc_of[c] for c in cids[:TOP]]
            ranks.append(docs.index(g) + 1 if g in docs else 0)
    r = np.asarray(ranks)
    found = r > 0
    mrr = float(np.mean(np.where(found, 1 / np.maximum(r, 1), 0)))
    return [float(np.mean(found & (r <= k))) for k in (1, 5, 10)] + [mrr]


def fused(dense, lexical, doc_of, *, method="zscore", k=60, weights=None, aggregation="none",
          which=("dense", "lexical")):
    from sparkrag.retrieval.fusion import aggregate_documents, fuse_rankings

    out = []
    for d, lx in zip(dense, lexical):
        lists = {name: lst for name, lst in (("dense", d), ("lexical", lx)) if name in which}
        f = aggregate_documents(fuse_rankings(lists, method=method, k=k, weights=weights), doc_of, how=aggregation)
        out.append([cid for cid, _, _ in f])
    return out


def main(argv=None) -> None:
    from sparkrag.config import LexicalConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/squad2-train10"))
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "sparkrag-sweep-cache")
    args = parser.parse_args(argv)
    chunks, questions, pv, qv = corpus(args.data, args.cache)
    doc_of = {c[0]: c[1] for c in chunks}
    gold = [q["doc_id"] for q in questions]
    tune_titles = article_split([q["title"] for q in questions], "tune")
    halves = {"tune": [q["title"] in tune_titles for q in questions]}
    halves["check"] = [not t for t in halves["tune"]]
    print(f"{len(chunks)} chunks; {sum(halves['tune'])} tune / {sum(halves['check'])} check questions; "
          f"tune articles: {sorted(tune_titles)}")
    today = LexicalConfig(stemmer="", fold_accents=False, title_weight=0.0)
    lexicals = {"bm25 (before #16)": today, "+fold": dataclasses.replace(today, fold_accents=True),
                "+stem": dataclasses.replace(today, stemmer="english"),
                "+fold+stem": dataclasses.replace(today, fold_accents=True, stemmer="english"),
                "+fold+stem+title (default)": LexicalConfig()}
    lists = {name: lists_of(chunks, questions, pv, qv, cfg) for name, cfg in lexicals.items()}
    dense = lists["bm25 (before #16)"][0]
    rows = [("dense", fused(dense, dense, doc_of, which=("dense",)))]
    rows += [(f"lexical {n}", fused(dense, lx, doc_of, which=("lexical",))) for n, (_, lx, _) in lists.items()]
    new, old = lists["+fold+stem+title (default)"][1], lists["bm25 (before #16)"][1]
    grid = [((m, k, w), fused(dense, new, doc_of, method=m, k=k, weights={"dense": 1.0, "lexical": w}))
            for m, ks, ws in (("rrf", (5, 20, 60), (1.0, 1.5, 2.0)), ("zscore", (60,), (0.67, 1.0, 1.5)),
                              ("weighted", (60,), (0.67, 1.0, 1.5)))
            for k in ks for w in ws]
    for label, ranked in grid:
        print("grid", label, "tune", " ".join(f"{v:.3f}" for v in score(ranked, doc_of, gold, halves["tune"])))
    best = {m: max((g for g in grid if g[0][0] == m), key=lambda g: sum(score(g[1], doc_of, gold, halves["tune"])[:2]))
            for m in ("rrf", "zscore", "weighted")}
    rows += [("hybrid rrf k=60 (before #16 lexical)", fused(dense, old, doc_of, method="rrf")),
             ("hybrid zscore (before #16 lexical)", fused(dense, old, doc_of)),
             ("hybrid rrf k=60", fused(dense, new, doc_of, method="rrf"))]
    rows += [(f"hybrid {m} best on tune k={b[0][1]} w_lex={b[0][2]}", b[1]) for m, b in best.items()]
    rows += [(f"hybrid zscore doc_aggregation={a}", fused(dense, new, doc_of, aggregation=a)) for a in ("max", "sum")]
    print(f"\n{'setting':52} {'tune r@1/5/10 MRR':>26} {'check r@1/5/10 MRR':>26}")
    for name, ranked in rows:
        cells = [" ".join(f"{v:.3f}" for v in score(ranked, doc_of, gold, halves[h])) for h in ("tune", "check")]
        print(f"{name:52} {cells[0]:>26} {cells[1]:>26}")
    print("\nBM25 query seconds for all questions: " + ", ".join(f"{n} {s:.2f}" for n, (_, _, s) in lists.items()))


if __name__ == "__main__":
    main()
