"""The Spark + Delta stacks sparkrag is tested on, and their offline installation.

    python resources/stacks/stacks.py install spark3.5-native   # fetch once (network)
    python resources/stacks/stacks.py env spark3.5-native       # KEY=VALUE lines for make/tests
    python resources/stacks/stacks.py submit-args spark4-native # spark-submit options

Stacks (``STACK=`` in the Makefile):

- ``delta-rs`` (default, the laptop): the venv's pyspark 4.x; Delta through sparkrag's
  delta-rs data source. Nothing to install beyond ``make install``.
- ``spark4-native``: the same pyspark with the matching ``io.delta:delta-spark_2.13`` jars
  (the Delta release that the venv's ``delta-spark`` Python package pairs with).
- ``spark3.5-native``: pyspark 3.5 (the Spark of Databricks 15.4/16.4 LTS ML, EMR 7,
  Dataproc 2.2) with ``io.delta:delta-spark_2.12`` 3.x jars. Its Python packages go to
  ``.stacks/spark3.5-native/python``, which is put first on ``PYTHONPATH``.

``install`` resolves the jars once with Spark's own Ivy (``spark.jars.packages``, cache
kept under ``.stacks/<stack>/ivy``) and writes ``.stacks/<stack>/conf/spark-defaults.conf``
naming the local jar files (``spark.jars``) and the Delta extension and catalog. A Spark
launched with ``SPARK_CONF_DIR`` pointing there (pyspark, spark-submit, a standalone
cluster's driver) loads Delta without any network, as a cluster's own defaults would.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACKS_DIR = ROOT / ".stacks"
STACKS = ("delta-rs", "spark4-native", "spark3.5-native")

# pyspark 3.5.9 is the last 3.5 release; Delta 3.3.2 is the newest 3.x whose Python package
# accepts it (Delta 3.x pairs with Spark 3.5.x: docs.delta.io/releases).
SPARK35_PYTHON = ("pyspark==3.5.9", "py4j==0.10.9.7", "delta-spark==3.3.2")
SPARK35_DELTA = "io.delta:delta-spark_2.12:3.3.2"
# The Delta jars built for each Spark 4 minor (Delta 4.4.0 is built for Spark 4.2.0, 4.1.0
# and 4.0.1; the unsuffixed artifact targets 4.2). The venv's pyspark picks the row.
SPARK4_DELTA = {"4.2": "io.delta:delta-spark_2.13:4.4.0", "4.1": "io.delta:delta-spark_4.1_2.13:4.4.0",
                "4.0": "io.delta:delta-spark_4.0_2.13:4.4.0"}

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _check(stack: str) -> None:
    if stack not in STACKS:
        raise SystemExit(f"unknown STACK {stack!r}: expected one of {', '.join(STACKS)}")


def stack_dir(stack: str) -> Path:
    return STACKS_DIR / stack


def delta_package(stack: str) -> str:
    """The Maven coordinate of the Delta connector for a native stack."""
    if stack == "spark3.5-native":
        return SPARK35_DELTA
    spark = ".".join(metadata.version("pyspark").split(".")[:2])
    if spark not in SPARK4_DELTA:
        raise SystemExit(f"STACK={stack}: no Delta jars known for pyspark {spark}; known: {sorted(SPARK4_DELTA)}")
    return SPARK4_DELTA[spark]


def env(stack: str) -> dict[str, str]:
    """Environment variables that put a process (and its Spark) on ``stack``."""
    _check(stack)
    out = {"SPARKRAG_STACK": stack}
    if stack == "delta-rs":
        return out
    out["SPARK_CONF_DIR"] = str(stack_dir(stack) / "conf")
    if stack == "spark3.5-native":
        out["PYTHONPATH"] = os.pathsep.join(p for p in (str(stack_dir(stack) / "python"),
                                                        os.environ.get("PYTHONPATH")) if p)
    return out


def spark_conf(stack: str) -> dict[str, str]:
    """The Spark settings of a native stack (as written to its spark-defaults.conf)."""
    _check(stack)
    if stack == "delta-rs":
        return {}
    manifest = stack_dir(stack) / "jars.json"
    if not manifest.exists():
        raise SystemExit(f"STACK={stack} is not installed: run `make install-stacks` (or "
                         f"`python resources/stacks/stacks.py install {stack}`)")
    jars = json.loads(manifest.read_text())["jars"]
    return {"spark.jars": ",".join(jars), **DELTA_CONF}


def submit_args(stack: str) -> list[str]:
    """spark-submit options equivalent to the stack's defaults file."""
    args: list[str] = []
    for key, value in spark_conf(stack).items():
        args += (["--jars", value] if key == "spark.jars" else ["--conf", f"{key}={value}"])
    return args


def _python(stack: str) -> None:
    target = stack_dir(stack) / "python"
    if (target / ".installed").exists():
        return
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(target), *SPARK35_PYTHON], check=True)
    (target / ".installed").write_text("\n".join(SPARK35_PYTHON) + "\n")


def _resolve_jars(stack: str) -> list[str]:
    """Download the Delta jars and their dependencies with Spark's Ivy; returns local paths."""
    ivy = stack_dir(stack) / "ivy"
    package = delta_package(stack)
    code = ("from pyspark.sql import SparkSession\n"
            "s = SparkSession.builder.master('local[1]').config('spark.ui.enabled', 'false')"
            ".config('spark.driver.bindAddress', '127.0.0.1').config('spark.driver.host', '127.0.0.1')"
            f".config('spark.jars.packages', {package!r}).config('spark.jars.ivy', {str(ivy)!r}).getOrCreate()\n"
            "s.stop()\n")
    child_env = {k: v for k, v in os.environ.items() if k != "SPARK_CONF_DIR"}
    child_env.update({k: v for k, v in env(stack).items() if k == "PYTHONPATH"})
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env)
    # Spark's Ivy retrieves exactly the resolved artifacts (Spark/Scala excluded) into jars/.
    jars = sorted(glob.glob(str(ivy / "jars" / "*.jar")))
    if not any(Path(j).name.startswith("io.delta_delta-spark") for j in jars):
        raise SystemExit(f"Ivy did not retrieve {package} into {ivy / 'jars'}")
    return jars


def install(stack: str) -> None:
    """Fetch what ``stack`` needs (network once) and write its offline Spark defaults."""
    _check(stack)
    if stack == "delta-rs":
        return
    folder = stack_dir(stack)
    folder.mkdir(parents=True, exist_ok=True)
    if stack == "spark3.5-native":
        _python(stack)
    manifest = folder / "jars.json"
    package = delta_package(stack)
    if not manifest.exists() or json.loads(manifest.read_text()).get("package") != package:
        manifest.write_text(json.dumps({"package": package, "jars": _resolve_jars(stack)}, indent=1))
    conf = folder / "conf"
    conf.mkdir(exist_ok=True)
    lines = [f"# written by resources/stacks/stacks.py install {stack}; do not edit"]
    lines += [f"{key} {value}" for key, value in spark_conf(stack).items()]
    (conf / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
    print(f"stack {stack}: {package} -> {conf / 'spark-defaults.conf'}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("install", "env", "submit-args"):
        print(__doc__, file=sys.stderr)
        return 2
    command, stack = argv
    if command == "install":
        install(stack)
    elif command == "env":
        print("\n".join(f"{k}={v}" for k, v in env(stack).items()))
    else:
        print(" ".join(submit_args(stack)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
