"""The few exception types sparkrag raises on purpose."""

__all__ = [
    "SparkragError",
    "ConfigError",
    "SchemaError",
    "TableError",
    "VectorStoreError",
    "ModelContractError",
    "DependencyError",
    "RunFailedError",
    "LockError",
    "OutputError",
]


class SparkragError(Exception):
    """Base of every error sparkrag raises deliberately."""


class ConfigError(SparkragError, ValueError):
    """An option is unknown, mistyped or out of range; the message names it."""


class SchemaError(SparkragError, ValueError):
    """A table or DataFrame lacks a column or has one of the wrong type; the message names it."""


class TableError(SparkragError):
    """A Delta table operation failed (missing table, commit conflict after retries...)."""


class VectorStoreError(SparkragError):
    """The vector store disagrees with the chunks table or with the configured encoder."""


class ModelContractError(SparkragError):
    """A model returned the wrong number of rows or vectors of the wrong dimension."""


class DependencyError(SparkragError, ImportError):
    """An installed library is missing, or too old for the path asked for; the message names it and the fix."""


class RunFailedError(SparkragError):
    """A job ran to the end but too many of its rows failed (``answer.max_error_rate``); its rows are kept."""
class LockError(SparkragError):
    """Another run holds the lock on the same tables/index (or run id), or this run lost its lock."""


class OutputError(SparkragError):
    """An output location (tables root, Chroma path, lexical path) cannot be written; names path and option."""
