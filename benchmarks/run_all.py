"""Run every benchmark under benchmarks/ (`make bench`); each prints its figures next to its baseline.

Benchmarks are not tests and never gate CI. Extra arguments after `--only NAME ...` pick some.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# squad_eval needs the SQuAD sample beside the checkout; gpu_generate exits cleanly without CUDA.
ORDER = ["delta_io", "ingest", "retrieval", "squad_eval", "gpu_generate"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="benchmark names (file stems) to run")
    args = parser.parse_args(argv)
    scripts = [HERE / f"{name}.py" for name in ORDER if (HERE / f"{name}.py").exists()]
    scripts += sorted(p for p in HERE.glob("*.py") if p.stem not in ORDER and p.stem != "run_all")
    if args.only:
        scripts = [p for p in scripts if p.stem in args.only]
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)])
        print(f"=== {script.stem}: exit {code} in {time.perf_counter() - start:.0f} s ===", flush=True)
        if code:
            failed.append(script.stem)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
