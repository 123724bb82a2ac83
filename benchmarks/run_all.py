"""Run every benchmark under benchmarks/ (`make bench`); each prints its figures next to its baseline.

By default each script runs at a reduced size (QUICK below) so that the whole suite finishes
in about 20-25 minutes on a 2-core machine; ``--full`` runs every script at its own
defaults (the sizes benchmarks/README.md records; about an hour on 2 cores, plus the full
SQuAD evaluation). ``--only NAME ...`` picks some (file stems). Benchmarks are not tests
and never gate CI.

    .venv/bin/python benchmarks/run_all.py [--full] [--only retrieval end_to_end]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# squad_eval needs the SQuAD sample beside the checkout; gpu_generate exits cleanly without CUDA.
ORDER = ["delta_io", "ingest", "retrieval", "end_to_end", "scale", "squad_eval", "gpu_generate"]
# Reduced sizes for the default run (each figure still has its baseline from the same run).
QUICK = {
    "delta_io": ["--rows", "50000", "--repeat", "1"],
    "ingest": ["--chunks", "400", "--load-chunks", "2000", "--repeat", "1"],
    "retrieval": ["--queries", "1000"],
    "end_to_end": ["--repeat-questions", "4", "--rounds", "2"],
    "scale": ["--base-docs", "60"],
    "squad_eval": ["--limit", "300"],
    "answer_quality": ["--sample", "40"],  # SmolLM2 on CPU: ~1-3 s per question
    "shards": ["--vectors", "4000", "--repeat", "1"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="benchmark names (file stems) to run")
    parser.add_argument("--full", action="store_true", help="each script at its own (larger) defaults")
    args = parser.parse_args(argv)
    scripts = [HERE / f"{name}.py" for name in ORDER if (HERE / f"{name}.py").exists()]
    scripts += sorted(p for p in HERE.glob("*.py")
                      if p.stem not in ORDER and p.stem != "run_all" and not p.stem.startswith("_"))
    if args.only:
        scripts = [p for p in scripts if p.stem in args.only]
    failed = []
    for script in scripts:
        extra = [] if args.full else QUICK.get(script.stem, [])
        print(f"\n=== {script.stem} {' '.join(extra)} (load {os.getloadavg()[0]:.1f}) ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *extra])
        print(f"=== {script.stem}: exit {code} in {time.perf_counter() - start:.0f} s ===", flush=True)
        if code:
            failed.append(script.stem)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
