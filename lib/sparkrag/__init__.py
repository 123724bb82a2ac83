"""sparkrag: batch retrieval-augmented generation on Apache Spark.

Import-light on purpose: importing the package loads neither torch, transformers nor
chromadb; those load inside the functions that run on executors.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
