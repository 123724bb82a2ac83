"""Text encoders on Spark executors: a per-worker cached factory, pooling, and a DataFrame stage.

The encoder is a Hugging Face ``AutoModel`` plus its tokenizer, described by
``EncoderConfig``: mean or CLS pooling, optional L2 normalisation, role prefixes, and a
separate query model (Dragon-multiturn: CLS, no normalisation, two encoders). With mean
pooling, L2 and max length 256, all-MiniLM-L6-v2 here equals sentence-transformers to
~1e-7.

Length policy: passages longer than the encoder's max length raise (the chunker
guarantees they fit, so a long passage means a config mismatch); queries are truncated
to the max length, because questions with long histories may be long and a truncated
query still retrieves.

Example:
    >>> encode = make_encode_fn(EncoderConfig(), role="query")()  # doctest: +SKIP
    >>> encode(["who wrote it?"]).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from sparkrag.config import EncoderConfig
from sparkrag.errors import ConfigError, ModelContractError, SchemaError
from sparkrag.hf_compat import pretrained_kwargs
from sparkrag.models import encoder_max_length, load_tokenizer, resolve_device, resolve_model_path, worker_cached
from sparkrag.schemas import require_columns

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import DataFrame

__all__ = ["Role", "encoder_model", "encoder_info", "make_encode_fn", "embed_dataframe", "check_vectors"]

log = logging.getLogger(__name__)

Role = Literal["passage", "query"]


def encoder_model(cfg: EncoderConfig, role: Role) -> str:
    """The model id, as configured, that encodes ``role`` texts."""
    if role not in ("passage", "query"):
        raise ConfigError(f"role: expected 'passage' or 'query', got {role!r}")
    return (cfg.query_model or cfg.model) if role == "query" else cfg.model


def encoder_info(cfg: EncoderConfig, role: Role = "passage") -> tuple[str, int]:
    """(model id as configured, embedding dimension) without loading weights.

    The dimension is the model config's ``hidden_size`` (what both poolings return).

    Example:
        >>> encoder_info(EncoderConfig())  # doctest: +SKIP
        ('sentence-transformers/all-MiniLM-L6-v2', 384)
    """
    from transformers import AutoConfig

    model = encoder_model(cfg, role)
    config = AutoConfig.from_pretrained(resolve_model_path(model))
    return model, int(config.hidden_size)


def check_vectors(vectors: np.ndarray, *, rows: int, dim: int, model: str) -> np.ndarray:
    """The contract of every encoder call: ``rows`` finite float32 vectors of size ``dim``.

    Raises:
        ModelContractError: "expected X, got Y", naming the model.
    """
    import numpy as np

    if vectors.ndim != 2 or vectors.shape[0] != rows:
        raise ModelContractError(f"{model}: expected {rows} vectors, got array of shape {vectors.shape}")
    if vectors.shape[1] != dim:
        raise ModelContractError(f"{model}: expected vectors of dimension {dim}, got {vectors.shape[1]}")
    if vectors.dtype != np.float32:
        raise ModelContractError(f"{model}: expected float32 vectors, got {vectors.dtype}")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise ModelContractError(f"{model}: expected finite vectors, got NaN/inf in {int(bad.sum())} of {rows} "
                                 f"(first at row {int(np.argmax(bad))})")
    return vectors


def _load_encoder(model_path: str, device: str, threads: int) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode on ``device``): bf16 on CUDA, fp32 on CPU."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in executor logs
    if device == "cpu":
        torch.set_num_threads(threads)  # one per Spark worker beats two threads in one process
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModel.from_pretrained(model_path, **pretrained_kwargs(dtype)).to(device).eval()
    return load_tokenizer(model_path), model


def _pool(hidden: Any, mask: Any, pooling: str, normalize: bool) -> Any:
    """Mean over real tokens (sentence-transformers' formula) or the first ([CLS]) token; fp32."""
    import torch

    hidden = hidden.float()
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled


def make_encode_fn(cfg: EncoderConfig, *, role: Role) -> Callable[[], Callable[[list[str]], np.ndarray]]:
    """A zero-argument factory, run on workers, returning ``encode(texts) -> float32 (n, dim)``.

    The factory loads tokenizer and model once per Python worker (``worker_cached``) on
    ``resolve_device(cfg.device)``. ``encode`` adds the role's prefix, sorts by token
    length, runs batches of ``cfg.batch_size`` under ``torch.inference_mode()``, pools,
    normalises when ``cfg.normalize``, and returns vectors in input order.

    Args:
        cfg: the encoder; ``query_model`` (when set) encodes the query role.
        role: ``passage`` (texts longer than the max length raise) or ``query``
            (truncated to the max length).

    Raises:
        ConfigError: from ``encode``, for a passage longer than the encoder's max length
            (naming its index, ``chunk.max_tokens`` and ``encoder.max_length``).
        ModelContractError: from ``encode``, when the model returns the wrong number of
            vectors, the wrong dimension or non-finite values.

    Example:
        >>> vectors = make_encode_fn(EncoderConfig(), role="passage")()(["a text"])  # doctest: +SKIP
    """
    model_id = encoder_model(cfg, role)
    prefix = cfg.query_prefix if role == "query" else cfg.passage_prefix

    def factory() -> Callable[[list[str]], np.ndarray]:
        path = resolve_model_path(model_id)
        device = resolve_device(cfg.device)
        tokenizer, model = worker_cached(("encoder", path, device), lambda: _load_encoder(path, device,
                                                                                         cfg.torch_threads))
        max_length = encoder_max_length(path, cfg.max_length)
        dim = int(model.config.hidden_size)

        def encode(texts: list[str]) -> np.ndarray:
            return _encode(texts, tokenizer, model, cfg=cfg, role=role, prefix=prefix, max_length=max_length,
                           dim=dim, model_id=model_id)

        return encode

    return factory


def _encode(texts: list[str], tokenizer: Any, model: Any, *, cfg: EncoderConfig, role: Role, prefix: str,
            max_length: int, dim: int, model_id: str) -> np.ndarray:
    import numpy as np
    import torch

    texts = [prefix + t for t in texts]
    out = np.empty((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    ids = tokenizer(texts, truncation=role == "query", max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)["input_ids"]
    lengths = [len(x) for x in ids]
    if role == "passage" and max(lengths) > max_length:
        row = int(np.argmax(lengths))
        raise ConfigError(f"{model_id}: passage {row} has {lengths[row]} tokens (prefix and special tokens "
                          f"included), over the encoder's max length {max_length}; chunk passages with "
                          f"chunk.max_tokens that fits encoder.max_length")
    order = np.argsort(-np.asarray(lengths), kind="stable")  # longest first: equal-length batches pad least
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=role == "query",
                              max_length=max_length, return_tensors="pt", verbose=False).to(device)
            hidden = model(**batch).last_hidden_state
            pooled = _pool(hidden, batch["attention_mask"], cfg.pooling, cfg.normalize)
            if tuple(pooled.shape) != (len(rows), dim):
                raise ModelContractError(f"{model_id}: expected a batch of {len(rows)} vectors of dimension {dim}, "
                                         f"got shape {tuple(pooled.shape)}")
            out[rows] = pooled.cpu().numpy()  # off the GPU batch by batch
    return check_vectors(out, rows=len(texts), dim=dim, model=model_id)


def embed_dataframe(df: DataFrame, *, text_col: str, out_col: str = "embedding", cfg: EncoderConfig,
                    role: Role = "passage") -> DataFrame:
    """Spark stage: append ``out_col array<float>`` holding each row's ``text_col`` embedding.

    Runs ``mapInArrow`` with the encoder cached per worker; each Arrow batch
    (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows) is sorted by length inside
    ``encode``. Arrow rather than pandas batches pass every input column through
    untouched (maps, structs, timestamps) at the same speed as ``mapInPandas``.

    Args:
        df: any DataFrame with a string column ``text_col``.
        text_col: the texts to embed (non-null).
        out_col: the new column; must not exist yet.
        cfg: the encoder.
        role: ``passage`` or ``query`` (prefix, model and length policy).

    Returns:
        A lazy DataFrame: all input columns plus ``out_col``.

    Raises:
        SchemaError: before any action when ``text_col`` is missing or not a string or
            ``out_col`` exists; on executors when ``text_col`` has nulls.
        ConfigError / ModelContractError: on executors, see ``make_encode_fn``.

    Example:
        >>> embedded = embed_dataframe(chunks, text_col="text", cfg=EncoderConfig())  # doctest: +SKIP
    """
    import pyarrow as pa
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    require_columns(df.schema, {text_col: "embed_dataframe(text_col=...)"}, where="embed_dataframe input")
    if not isinstance(df.schema[text_col].dataType, StringType):
        raise SchemaError(f"embed_dataframe: column {text_col!r} must be a string, got {df.schema[text_col].dataType}")
    if out_col in df.columns:
        raise SchemaError(f"embed_dataframe: output column {out_col!r} already exists; pass another out_col")
    model_id, dim = encoder_info(cfg, role)
    log.info("embedding %r as %s with %s (dim %d, pooling %s, normalize %s, batch %d)", text_col, role,
             model_id, dim, cfg.pooling, cfg.normalize, cfg.batch_size)
    schema = StructType(df.schema.fields + [StructField(out_col, ArrayType(FloatType(), False), False)])
    make_encode = make_encode_fn(cfg, role=role)

    def embed_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        encode = make_encode()
        for batch in batches:
            column = batch.column(text_col)
            if column.null_count:
                raise SchemaError(f"embed_dataframe: column {text_col!r} has {column.null_count} null(s) in a "
                                  f"batch of {batch.num_rows}; expected non-null text")
            vectors = encode(column.to_pylist())
            flat = pa.array(vectors.reshape(-1), type=pa.float32())
            values = pa.FixedSizeListArray.from_arrays(flat, dim).cast(pa.list_(pa.float32()))
            yield pa.RecordBatch.from_arrays([*batch.columns, values], names=[*batch.schema.names, out_col])

    return df.mapInArrow(embed_batches, schema)
