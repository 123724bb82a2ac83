"""Evaluation scores and their report: SQuAD scoring, per-question metrics, Markdown and PNG plots.

Pure driver-side code (pandas, numpy, matplotlib): :mod:`sparkrag.pipelines.evaluate` builds the
per-question rows with Spark and hands them here. Scoring follows the official SQuAD
v2.0 evaluation script (``normalize_answer``, ``compute_exact``, ``compute_f1``, gold
answers whose normalised text is empty dropped, no gold meaning "no answer").

Plots are drawn on ``matplotlib.figure.Figure`` objects, which render with the Agg
canvas without pyplot: headless, and no process-wide backend is switched.

Example:
    >>> metrics, confusion = score_questions(pdf)  # doctest: +SKIP
    >>> write_report("reports/eval-1", metrics, pdf, confusion=confusion)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import os
import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from sparkrag.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Metric", "SCORED_COLUMNS", "REPORT_FILES", "normalize_answer", "exact_match", "token_f1",
           "score_questions", "recall_curve", "write_report"]

log = logging.getLogger(__name__)

REPORT_FILES = ("report.md", "recall_at_k.png", "latency_hist.png", "abstention_confusion.png")


# ---- SQuAD scoring (the official v2.0 evaluation script's rules) ----

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str | None) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace.

    Example:
        >>> normalize_answer("The  Eiffel-Tower!")
        'eiffeltower'
    """
    text = "".join(ch for ch in (text or "").lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _gold(answers: Sequence[str] | None) -> list[str]:
    kept = [a for a in (answers if answers is not None else []) if isinstance(a, str) and normalize_answer(a)]
    return kept or [""]  # the official script: no non-empty gold answer means "no answer"


def exact_match(prediction: str | None, answers: Sequence[str] | None) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0.

    Example:
        >>> exact_match("the Beatles", ["Beatles", "The Fab Four"])
        1.0
    """
    pred = normalize_answer(prediction)
    return float(max(pred == normalize_answer(g) for g in _gold(answers)))


def _f1(pred_tokens: list[str], gold: str) -> float:
    gold_tokens = normalize_answer(gold).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str | None, answers: Sequence[str] | None) -> float:
    """SQuAD token F1 (bag of normalised tokens), the max over the gold answers.

    Example:
        >>> round(token_f1("in the late 1990s", ["late 1990s", "1990s"]), 3)
        0.8
    """
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1(pred_tokens, g) for g in _gold(answers))



# ---- scoring (per-question rows, pandas on the driver) ----

@dataclass(frozen=True)
class Metric:
    """One evaluation figure; ``key`` is how it appears in the returned dict and the runs table."""

    name: str
    value: float
    k: int | None = None
    n: int | None = None

    @property
    def key(self) -> str:
        return self.name if self.k is None else f"{self.name}@{self.k}"


def _retrieval_metrics(pdf: "pd.DataFrame", ks: Sequence[int]) -> list[Metric]:
    has_gold = pdf[pdf["gold_doc_id"].notna()]
    n = len(has_gold)
    if not n:
        return []
    rank = has_gold["gold_rank"].astype("float64").to_numpy()  # NaN: gold not retrieved
    found = ~np.isnan(rank)
    ranks = np.nan_to_num(rank, nan=np.inf)
    out = [Metric("recall", float(np.mean(ranks <= k)), k, n) for k in sorted(set(ks))]
    out.append(Metric("mrr", float(np.mean(np.where(found, 1.0 / np.where(found, rank, 1.0), 0.0))), None, n))
    return out


def _impossible(pdf: "pd.DataFrame") -> "pd.Series":
    return pdf["is_impossible"].map(lambda v: v is True or v is np.True_)


def _answer_metrics(pdf: "pd.DataFrame") -> list[Metric]:
    has_gold = pdf["gold_answers"].map(lambda a: _gold(a) != [""])
    scored = pdf[has_gold & ~_impossible(pdf)]
    if not len(scored):
        return []
    abstained = scored["abstained"].map(lambda v: v is True or v is np.True_)
    predictions = [("" if abst else (ans if isinstance(ans, str) else ""))  # abstaining predicts "no answer"
                   for abst, ans in zip(abstained, scored["answer"])]
    gold = scored["gold_answers"].tolist()
    em = [exact_match(p, g) for p, g in zip(predictions, gold)]
    f1 = [token_f1(p, g) for p, g in zip(predictions, gold)]
    n = len(scored)
    return [Metric("exact_match", float(np.mean(em)), None, n), Metric("f1", float(np.mean(f1)), None, n)]


def _abstention_metrics(pdf: "pd.DataFrame") -> tuple[list[Metric], dict[str, int] | None]:
    abstained = pdf["abstained"].map(lambda v: v is True or v is np.True_).to_numpy(bool)
    out = [Metric("abstention_rate", float(abstained.mean()), None, len(pdf))] if len(pdf) else []
    known = pdf["is_impossible"].notna().to_numpy(bool)
    if not known.any():
        return out, None
    truth, pred = _impossible(pdf).to_numpy(bool)[known], abstained[known]
    cm = {"tp": int((truth & pred).sum()), "fp": int((~truth & pred).sum()), "fn": int((truth & ~pred).sum()),
          "tn": int((~truth & ~pred).sum())}
    n = int(known.sum())
    out += [Metric(f"abstention_{key}", float(value), None, n) for key, value in cm.items()]
    precision = cm["tp"] / (cm["tp"] + cm["fp"]) if cm["tp"] + cm["fp"] else None  # undefined: nobody abstained
    recall = cm["tp"] / (cm["tp"] + cm["fn"]) if cm["tp"] + cm["fn"] else None  # undefined: nothing impossible
    if precision is not None:
        out.append(Metric("abstention_precision", precision, None, cm["tp"] + cm["fp"]))
    if recall is not None:
        out.append(Metric("abstention_recall", recall, None, cm["tp"] + cm["fn"]))
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(Metric("abstention_f1", f1, None, n))
    return out, cm


def _cost_metrics(pdf: "pd.DataFrame") -> list[Metric]:
    out: list[Metric] = []
    latency = pdf["latency_ms"].dropna().astype("float64").to_numpy()
    if len(latency):
        out += [Metric("latency_ms_p50", float(np.percentile(latency, 50)), None, len(latency)),
                Metric("latency_ms_p95", float(np.percentile(latency, 95)), None, len(latency)),
                Metric("latency_ms_mean", float(latency.mean()), None, len(latency))]
    for col in ("prompt_tokens", "completion_tokens"):
        values = pdf[col].dropna().astype("float64").to_numpy()
        if len(values):
            out += [Metric(f"{col}_total", float(values.sum()), None, len(values)),
                    Metric(f"{col}_mean", float(values.mean()), None, len(values))]
    errors = int(pdf["error"].notna().sum())
    out += [Metric("errors", float(errors), None, len(pdf))]
    if len(pdf):
        out.append(Metric("error_rate", errors / len(pdf), None, len(pdf)))
    return out


SCORED_COLUMNS = ("gold_doc_id", "gold_rank", "gold_answers", "is_impossible", "answer", "abstained",
                  "latency_ms", "prompt_tokens", "completion_tokens", "error")


def score_questions(pdf: "pd.DataFrame",
                    ks: Sequence[int] = (1, 3, 5, 10)) -> tuple[list[Metric], dict[str, int] | None]:
    """All answer-run metrics from per-question rows (``sparkrag.pipelines.evaluate.question_frame``).

    Args:
        pdf: one row per question with :data:`SCORED_COLUMNS`: ``gold_rank`` is the best
            rank of a context from the gold document (NaN/None: not retrieved).
        ks: the recall@k cut-offs.

    Returns:
        The metrics (those without data left out) and the abstention confusion counts
        (``tp``: abstained on an impossible question, ``fp``, ``fn``, ``tn``; None when no
        question has ``is_impossible``).

    Raises:
        SchemaError: a column is missing.

    Example:
        >>> import pandas as pd
        >>> pdf = pd.DataFrame({"gold_doc_id": ["d"], "gold_rank": [2.0], "gold_answers": [["Paris"]],
        ...     "is_impossible": [False], "answer": ["paris"], "abstained": [False], "latency_ms": [5.0],
        ...     "prompt_tokens": [10], "completion_tokens": [2], "error": [None]})
        >>> {m.key: m.value for m in score_questions(pdf, ks=(1, 2))[0]}["recall@2"]
        1.0
    """
    missing = [c for c in SCORED_COLUMNS if c not in pdf.columns]
    if missing:
        raise SchemaError(f"score_questions: missing column(s) {missing}; found {list(pdf.columns)}")
    abstention, confusion = _abstention_metrics(pdf)
    return [*_retrieval_metrics(pdf, ks), *_answer_metrics(pdf), *abstention, *_cost_metrics(pdf)], confusion


# ---- the report: Markdown and three plots ----

def recall_curve(pdf: "pd.DataFrame", max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k = 1..max_k, recall@k) over the questions that have a gold document."""
    rank = pdf.loc[pdf["gold_doc_id"].notna(), "gold_rank"].astype("float64").to_numpy()
    ks = np.arange(1, max(1, max_k) + 1)
    if not len(rank):
        return ks, np.full(len(ks), np.nan)
    return ks, np.array([np.mean(np.nan_to_num(rank, nan=np.inf) <= k) for k in ks])


def _figure(width: float = 6.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _no_data(ax: Any, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_recall(path: str, pdf: "pd.DataFrame", ks: Sequence[int]) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    top = int(pdf["n_contexts"].max()) if "n_contexts" in pdf and len(pdf) else 0
    curve_k, recall = recall_curve(pdf, max(max(ks), top))
    if np.isnan(recall).all():
        _no_data(ax, "no question has a gold document")
    else:
        ax.plot(curve_k, recall, marker=".", label="recall@k")
        marked = [k for k in ks if k <= len(recall)]
        ax.scatter(marked, [recall[k - 1] for k in marked], color="C3", zorder=3, label="reported k")
        ax.set(xlabel="k (contexts)", ylabel="gold document retrieved", ylim=(0, 1.02), title="Retrieval recall@k")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.savefig(path)


def _plot_latency(path: str, pdf: "pd.DataFrame") -> None:
    fig = _figure()
    ax = fig.add_subplot()
    latency = pdf["latency_ms"].dropna().astype("float64").to_numpy()
    if not len(latency):
        _no_data(ax, "no latency recorded")
    else:
        ax.hist(latency, bins=int(min(50, max(5, np.sqrt(len(latency))))), color="C0")
        for q, style in ((50, "--"), (95, ":")):
            ax.axvline(np.percentile(latency, q), color="C3", linestyle=style, label=f"p{q}")
        ax.set(xlabel="latency per question (ms)", ylabel="questions", title="Answer latency")
        ax.legend()
    fig.savefig(path)


def _plot_confusion(path: str, confusion: Mapping[str, int] | None) -> None:
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot()
    if not confusion:
        _no_data(ax, "no is_impossible labels")
    else:
        grid = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
        ax.imshow(grid, cmap="Blues")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > grid.max() / 2 else "black")
        ax.set_xticks([0, 1], ["answered", "abstained"])
        ax.set_yticks([0, 1], ["answerable", "impossible"])
        ax.set(xlabel="prediction", ylabel="gold", title="Abstention")
    fig.tight_layout()
    fig.savefig(path)


_SECTIONS = (
    ("Retrieval", ("recall", "mrr")),
    ("Answers (answerable questions)", ("exact_match", "f1")),
    ("Abstention", ("abstention_rate", "abstention_precision", "abstention_recall", "abstention_f1",
                    "abstention_tp", "abstention_fp", "abstention_fn", "abstention_tn")),
    ("Latency and tokens", ("latency_ms_p50", "latency_ms_p95", "latency_ms_mean", "prompt_tokens_total",
                            "prompt_tokens_mean", "completion_tokens_total", "completion_tokens_mean", "errors",
                            "error_rate")),
    ("ANN audit", ("ann_recall",)),
)


def _modes_table(modes: Mapping[str, Mapping[str, float]]) -> list[str]:
    """recall@k / MRR / queries per second of each retrieval mode, one row each."""
    columns = [c for c in next(iter(modes.values())) if c != "queries"]
    n = next(iter(modes.values())).get("queries")
    lines = ["## Retrieval modes", "", f"The same {n} questions retrieved in each mode (answer job code, no "
             "re-ranker; queries/s excludes the shared query encoding).", "",
             "| mode | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {mode} | " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |" for mode, row in modes.items()]
    return lines + [""]


def _markdown(metrics: Sequence[Metric], *, eval_run_id: str, run_id: str, counts: Mapping[str, int],
              audit: Mapping[str, Any] | None, top: int, ks: Sequence[int],
              modes: Mapping[str, Mapping[str, float]] | None = None) -> str:
    lines = [f"# Evaluation {eval_run_id}", "", f"Answer run: `{run_id}`", "",
             "| count | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in counts.items()], ""]
    for title, names in _SECTIONS:
        rows = [m for name in names for m in metrics if m.name == name]
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["Not measured (no data or no gold column for it).", ""]
            continue
        lines += ["| metric | value | n |", "|---|---|---|"]
        lines += [f"| {m.key} | {m.value:.4g} | {'' if m.n is None else m.n} |" for m in rows]
        lines.append("")
        if title == "Retrieval" and top and max(ks) > top:
            lines += [f"At most {top} contexts were kept per question (retrieval.top_k), so recall@k for "
                      f"k > {top} equals recall@{top}.", ""]
        present = {m.name for m in rows}
        if title == "Abstention" and "abstention_tp" in present and "abstention_f1" not in present:
            lines += ["Precision is undefined when no answer abstained, recall when no question is "
                      "impossible; undefined figures are left out.", ""]
        if title == "ANN audit" and audit:
            lines += [f"HNSW settings {dict(audit.get('hnsw') or {})}; {audit['queries']} queries, "
                      f"{audit['chunks']} chunks, {audit['collection_count']} vectors; worst query "
                      f"{audit['ann_recall_min']:.2f}.", ""]
    if modes:
        lines += _modes_table(modes)
    lines += ["## Plots", "", "![recall@k](recall_at_k.png)", "", "![latency](latency_hist.png)", "",
              "![abstention](abstention_confusion.png)", ""]
    return "\n".join(lines)


def write_report(report_dir: str, metrics: Sequence[Metric], pdf: "pd.DataFrame", *,
                 confusion: Mapping[str, int] | None, audit: Mapping[str, Any] | None = None,
                 eval_run_id: str = "", run_id: str = "", counts: Mapping[str, int] | None = None,
                 ks: Sequence[int] = (1, 3, 5, 10),
                 modes: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, str]:
    """Write ``report.md`` and the three plots of :data:`REPORT_FILES` into ``report_dir``.

    Args:
        metrics: from :func:`score_questions` (plus the ANN audit's).
        pdf: the per-question rows (``gold_doc_id``, ``gold_rank``, ``n_contexts``, ``latency_ms``).
        confusion: abstention counts, or None. audit: :func:`sparkrag.pipelines.evaluate.ann_audit`'s result.
        modes: :func:`sparkrag.pipelines.compare.compare_retrieval_modes`'s result, or None.

    Returns:
        File name -> path written. A plot without data says so instead of being left out.

    Example:
        >>> write_report("reports/e1", metrics, pdf, confusion=None)["report.md"]  # doctest: +SKIP
        'reports/e1/report.md'
    """
    os.makedirs(report_dir, exist_ok=True)
    paths = {name: os.path.join(report_dir, name) for name in REPORT_FILES}
    _plot_recall(paths["recall_at_k.png"], pdf, ks)
    _plot_latency(paths["latency_hist.png"], pdf)
    _plot_confusion(paths["abstention_confusion.png"], confusion)
    top = int(pdf["n_contexts"].max()) if "n_contexts" in pdf and len(pdf) else 0
    text = _markdown(metrics, eval_run_id=eval_run_id, run_id=run_id, counts=counts or {}, audit=audit,
                     top=top, ks=ks, modes=modes)
    with open(paths["report.md"], "w", encoding="utf-8") as fh:
        fh.write(text)
    log.info("evaluation report written to %s", report_dir)
    return paths
