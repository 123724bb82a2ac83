"""Delta tables: one interface (:class:`Tables`), two backends, chosen once per session.

``open_tables(spark, cfg)`` returns the native connector's implementation
(:mod:`sparkrag.delta.native`) when the JVM has Delta Lake, else delta-rs's
(:mod:`sparkrag.delta.delta_rs`, with the Python data source :mod:`sparkrag.delta.source`).
"""

from sparkrag.delta.backend import detect_backend, open_tables
from sparkrag.delta.tables import Backend, Tables, split_name

__all__ = ["Tables", "Backend", "open_tables", "detect_backend", "split_name"]
