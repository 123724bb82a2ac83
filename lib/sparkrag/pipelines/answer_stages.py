"""The answer job's two executor stages: retrieve (+ prompt) and generate.

Each ``make_*_stage`` returns a picklable ``mapInPandas`` function whose models, index and
tokenizer load once per Python worker. Failures stay in their row: a batch that raises
is retried row by row, and a row that still fails carries its ``error``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from pyspark.sql.types import DoubleType, StructField, StructType

from sparkrag.config import RagConfig
from sparkrag.schemas import ANSWERS_SCHEMA

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["stage1_schema", "stage2_schema", "make_retrieve_stage", "make_generate_stage", "query_text",
           "base_row", "filter_row", "get_field", "seq"]


def stage1_schema() -> StructType:
    """Rows between retrieval and generation."""
    keep = ["question_id", "question", "history", "contexts", "filters_json", "prompt", "prompt_tokens", "error"]
    fields = [ANSWERS_SCHEMA[name] for name in keep]
    return StructType(fields + [StructField("retrieval_ms", DoubleType(), True)])


def stage2_schema() -> StructType:
    """ANSWERS_SCHEMA without the lineage columns the driver adds (run_id, created_at)."""
    return StructType([f for f in ANSWERS_SCHEMA.fields if f.name not in ("run_id", "created_at")])


def query_text(question: str, history: Any) -> str:
    """The text the query encoder sees: the question, or the conversation in Dragon-multiturn's
    ``user: ...\\nagent: ...\\nuser: ...`` form when there is history."""
    if history is None or len(history) == 0:
        return question
    lines = [f"{'user' if get_field(t, 'role') == 'user' else 'agent'}: {get_field(t, 'content')}" for t in history]
    return "\n".join(lines + [f"user: {question}"])


def seq(values: Any) -> list:
    """A list from a column value that pandas may hand over as None or a numpy array."""
    return [] if values is None else list(values)


def get_field(obj: Any, key: str) -> Any:
    """A struct's field, whether pandas hands the struct over as a dict or a Row."""
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def filter_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row as the filters see it: the ``_f_<column>`` copies under their own names."""
    return {k[3:] if k.startswith("_f_") else k: v for k, v in row.items()}


def make_retrieve_stage(cfg: RagConfig, index_fn: Callable[[], Any], lexical_fn: Callable[[], Any] | None = None,
                        ) -> Callable[[Iterator["pd.DataFrame"]], Iterator["pd.DataFrame"]]:
    """mapInPandas function: questions -> contexts and filters (the prompt is packed where the
    model is, in the generate stage: only that worker loads the LLM's tokenizer).

    ``lexical_fn`` loads the BM25 index (``retrieval.mode`` lexical or hybrid).
    """
    from sparkrag.embed import make_encode_fn
    from sparkrag.retrieval.rerank import make_rerank_fn

    encode_fn = make_encode_fn(cfg.encoder, role="query")
    rerank_factory = make_rerank_fn(cfg.retrieval.rerank_model) if cfg.retrieval.rerank_model else None
    columns = stage1_schema().fieldNames()

    def retrieve(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        import pandas as pd

        tools = {"index": index_fn(), "encode": encode_fn(), "lexical": lexical_fn() if lexical_fn else None,
                 "rerank": rerank_factory() if rerank_factory else None}
        step = max(cfg.retrieval.query_batch_size, 1)
        for pdf in batches:
            for lo in range(0, len(pdf), step):
                rows = pdf.iloc[lo:lo + step].to_dict("records")
                yield pd.DataFrame(_isolated(rows, lambda rs: _retrieve_rows(rs, cfg, tools)), columns=columns)

    return retrieve


def _isolated(rows: list[dict], fn: Callable[[list[dict]], list[dict]]) -> list[dict]:
    """``fn`` over the batch; if it raises, row by row, so one bad row fails alone."""
    try:
        return fn(rows)
    except Exception:
        out = []
        for row in rows:
            try:
                out.extend(fn([row]))
            except Exception as exc:
                out.append({**base_row(row), "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return out


def base_row(row: dict) -> dict:
    return {"question_id": row["question_id"], "question": row["question"], "history": _history(row.get("history")),
            "contexts": None, "filters_json": None, "prompt": None, "prompt_tokens": None, "error": None,
            "retrieval_ms": None}


def _history(history: Any) -> list[dict] | None:
    if history is None:
        return None
    return [{"role": get_field(t, "role"), "content": get_field(t, "content")} for t in history]


def _retrieve_rows(rows: list[dict], cfg: RagConfig, tools: dict[str, Any]) -> list[dict]:
    from sparkrag.retrieval.search import retrieve_contexts

    start = time.perf_counter()
    out = [base_row(r) for r in rows]
    live = [i for i, r in enumerate(rows) if isinstance(r["question"], str) and r["question"].strip()]
    for i in set(range(len(rows))) - set(live):
        out[i]["error"] = "empty question"
    if live:
        texts = [query_text(rows[i]["question"], rows[i].get("history")) for i in live]
        filter_rows = [filter_row(rows[i]) for i in live]
        contexts, filters = retrieve_contexts(filter_rows, tools["encode"](texts), cfg=cfg.retrieval,
                                              index=tools["index"], lexical=tools["lexical"], query_texts=texts,
                                              space=cfg.chroma.space, queries=[rows[i]["question"] for i in live],
                                              rerank_fn=tools["rerank"])
        for i, ctxs, fjson in zip(live, contexts, filters):
            out[i].update(contexts=ctxs, filters_json=fjson)
    per_row = (time.perf_counter() - start) * 1000 / max(len(rows), 1)
    for row in out:
        row["retrieval_ms"] = per_row
    return out


def make_generate_stage(cfg: RagConfig) -> tuple[Callable[[Iterator["pd.DataFrame"]], Iterator["pd.DataFrame"]], Any]:
    """mapInPandas function: retrieved rows -> answers; and the ResourceProfile it runs under.

    The causal LM gets a whole partition at once: prompts are packed with its tokenizer in its
    style, then batched by token budget over the partition (``generator.max_batch_tokens``).
    The extractive answerer takes ``generator.batch_size`` rows per call.
    """
    from sparkrag.generation.abstain import make_abstention_rule
    from sparkrag.generation.llm import generator_model_id
    from sparkrag.generation.extractive import make_extractive_fn
    from sparkrag.generation.generate import make_generate_fn

    extractive = not cfg.generator.uses_llm
    factory = make_extractive_fn(cfg.encoder, cfg.generator) if extractive else make_generate_fn(cfg.generator)
    constants = {
        "model_id": generator_model_id(cfg), "embedding_model": cfg.encoder.model,
        "collection": cfg.chroma.collection if cfg.retrieval.vector_search == "ann" else f"exact:{cfg.names.chunks}",
        "retrieval_mode": cfg.retrieval.mode,
    }
    columns = stage2_schema().fieldNames()
    keep_prompt = cfg.answer.keep_prompt
    abstained = make_abstention_rule(cfg.generator)  # on the driver: a bad pattern fails before any task
    step = max(cfg.generator.batch_size, 1)

    def answer(rows: list[dict], model: Any) -> "pd.DataFrame":
        import pandas as pd

        answered = _isolated_answers(rows, model, extractive, cfg.generator.no_context == "abstain")
        out = [_answer_row(r, g, constants, keep_prompt, ms, abstained) for r, (g, ms) in zip(rows, answered)]
        return pd.DataFrame(out, columns=columns)

    def generate(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        import pandas as pd

        model = factory()
        if extractive:
            for pdf in batches:
                for lo in range(0, len(pdf), step):
                    yield answer(pdf.iloc[lo:lo + step].to_dict("records"), model)
            return
        frames = list(batches)
        rows = pd.concat(frames, ignore_index=True).to_dict("records") if frames else []
        if rows:
            _pack_rows(rows, cfg, model)
            yield answer(rows, model)

    return generate, _gpu_profile(cfg.generator.task_gpus)


def _pack_rows(rows: list[dict], cfg: RagConfig, model: Any) -> None:
    """Each live row's prompt in the model's style; the row keeps exactly the contexts it holds."""
    from sparkrag.generation.chat_prompt import pack_prompt

    for row in rows:
        if row["error"] is not None:
            continue
        ctxs = seq(row["contexts"])
        start = time.perf_counter()
        try:
            packed = pack_prompt(row["question"], _history(row["history"]), ctxs, model.tokenizer,
                                 cfg=cfg.generator, style=model.style)
        except Exception as exc:  # PromptTooLongError and friends: this row only
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            continue
        row.update(prompt=packed.text, prompt_tokens=packed.prompt_tokens,
                   contexts=[ctxs[k] for k in packed.used_contexts],
                   retrieval_ms=(row["retrieval_ms"] or 0.0) + (time.perf_counter() - start) * 1000)


def _isolated_answers(rows: list[dict], model: Any, extractive: bool,
                      abstain_without_context: bool) -> list[tuple[Any, float]]:
    from sparkrag.generation.generate import Generation
    from sparkrag.generation.prompt import ABSTAIN_TEXT

    results: list[tuple[Any, float]] = [(None, 0.0)] * len(rows)
    live = [i for i, r in enumerate(rows) if r["error"] is None]
    if abstain_without_context:  # nothing to answer from: the fixed sentence, no model call
        for i in [i for i in live if not seq(rows[i]["contexts"])]:
            results[i] = (Generation(ABSTAIN_TEXT, prompt_tokens=None, completion_tokens=0), 0.0)
        live = [i for i in live if seq(rows[i]["contexts"])]
    if not live:
        return results
    start = time.perf_counter()
    if extractive:
        inputs = [(rows[i]["question"], [c["text"] for c in seq(rows[i]["contexts"])]) for i in live]
    else:
        inputs = [rows[i]["prompt"] for i in live]
    try:
        gens = model(inputs)
    except Exception as exc:  # the model failed the whole batch: every row records why
        gens = [Generation(None, error=f"{type(exc).__name__}: {exc}"[:2000]) for _ in live]
    per_row = (time.perf_counter() - start) * 1000 / len(live)
    for i, gen in zip(live, gens):
        results[i] = (gen, per_row)
    return results


def _answer_row(row: dict, gen: Any, constants: dict, keep_prompt: bool, gen_ms: float,
                abstained: Callable[[str | None], bool]) -> dict:
    error = row["error"] or (gen.error if gen is not None else None)
    text = gen.text if gen is not None and gen.error is None else None
    prompt_tokens = row["prompt_tokens"]
    if gen is not None and gen.prompt_tokens is not None:
        prompt_tokens = gen.prompt_tokens
    contexts = row["contexts"]
    return {
        "question_id": row["question_id"], "question": row["question"], "history": _history(row["history"]),
        "answer": text, "abstained": None if text is None else abstained(text),
        "contexts": list(contexts) if contexts is not None else None, "filters_json": row["filters_json"],
        "prompt": row["prompt"] if keep_prompt else None, **constants,
        "prompt_tokens": prompt_tokens, "completion_tokens": gen.completion_tokens if gen is not None else None,
        "latency_ms": (row["retrieval_ms"] or 0.0) + gen_ms, "error": error,
    }


def _gpu_profile(task_gpus: float) -> Any:
    """A ResourceProfile asking ``task_gpus`` GPUs per generation task, or None."""
    if not task_gpus:
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", task_gpus)).build

