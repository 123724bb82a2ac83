"""Queries/s of hybrid retrieval before and after issue #16, interleaved in one process.

Opens a workdir that ``squad_eval.py --workdir DIR`` ingested (Chroma + the lexical index).
"after" is the published lexical index (the #16 settings); "before" is an index of the same
chunks built here with the settings before #16 (no stemming, no accent folding, no title
field; the published index has been sharded since #13, so the old version is no longer
kept beside it). Each round
times ``retrieve_contexts`` (the answer job's code) over the same encoded questions for
"before" (RRF k=60 over the old index) and "after" (the defaults over the new index),
alternating, so machine load hits both alike; prints each round and the median ratio.

    .venv/bin/python benchmarks/hybrid_speed.py --workdir /tmp/squad-work --split check --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from squad_eval import article_split  # noqa: E402


def main(argv=None) -> dict:
    from sparkrag.config import RagConfig, load_config
    from sparkrag.embed import encoder_info, make_encode_fn
    from sparkrag.index.lexical import LexicalIndex
    from sparkrag.retrieval.search import retrieve_contexts
    from sparkrag.index.shards import make_index_fn, resolve_shards

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/squad2-train10"))
    parser.add_argument("--split", choices=["all", "tune", "check"], default="check")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args(argv)
    cfg = load_config(RagConfig, None, [f"tables.root={args.workdir / 'tables'}", "chroma.collection=squad",
                                        f"chroma.path={args.workdir / 'chroma'}", f"retrieval.top_k={args.top_k}"])
    questions = [json.loads(line) for line in (args.data / "questions.jsonl").open(encoding="utf-8")]
    keep = article_split([q["title"] for q in questions], args.split)
    texts = [q["question"] for q in questions if q["title"] in keep]
    model_id, dim = encoder_info(cfg.encoder, "query")
    vectors = make_encode_fn(cfg.encoder, role="query")()(texts)
    index = make_index_fn(cfg.chroma, resolve_shards(cfg.chroma), embedding_model=cfg.encoder.model, dim=dim)()
    from sparkrag.config import LexicalConfig
    from sparkrag.index.lexical_shards import load_published

    published = load_published(cfg.lexical.path)
    old = LexicalConfig(stemmer="", fold_accents=False, title_weight=0.0)
    versions = {"after": published,
                "before": LexicalIndex.build(published.ids, published.documents, published.metadatas, old)}
    hybrid = dataclasses.replace(cfg.retrieval, mode="hybrid", fetch_k=max(cfg.retrieval.fetch_k, args.top_k))
    setups = {"before": (dataclasses.replace(hybrid, fusion="rrf", rrf_k=60, weights={"dense": 1.0, "lexical": 1.0}),
                         versions["before"]),
              "after": (hybrid, versions["after"])}
    rows = [{}] * len(texts)
    retrieve_contexts(rows[:50], vectors[:50], cfg=hybrid, index=index, lexical=versions["after"],
                      query_texts=texts[:50])  # warm-up: first queries load the HNSW index
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            retrieval, lexical = setups[name]
            start = time.perf_counter()
            retrieve_contexts(rows, vectors, cfg=retrieval, index=index, lexical=lexical, query_texts=texts,
                              space=cfg.chroma.space)
            rates[name].append(len(texts) / (time.perf_counter() - start))
        print(f"round {r + 1}: before {rates['before'][-1]:.1f} q/s, after {rates['after'][-1]:.1f} q/s", flush=True)
    ratios = [a / b for a, b in zip(rates["after"], rates["before"])]
    result = {"questions": len(texts), "before_qps_median": statistics.median(rates["before"]),
              "after_qps_median": statistics.median(rates["after"]), "ratio_median": statistics.median(ratios),
              "ratio_min": min(ratios)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
