"""Scale curve: ingest and answer time and memory at 1x, 4x and 16x a corpus synthesised from the sample.

The first ``--base-docs`` documents of ``resources/sample`` are the 1x corpus; kx holds k
copies of it, copy c > 0 with document ids ``<id>~c`` and a light perturbation (a seeded
~5% of the words dropped) so that every copy's chunks are distinct texts and vectors.
Each scale runs in a fresh process (its own Spark session, so memory does not carry
over): write the tables, the ingest job, then the answer job (extractive, default
retrieval config) on a FIXED set of ``--questions`` questions (the sample's, cycled).

Memory is sampled every ``--sample-s`` from /proc over the scale's whole process tree:
the driver (Python; it also writes the embedded Chroma), the JVM, and the Python workers
(pyspark daemon and workers: encoder, Chroma readers, extractive answerer). Figures are
PSS (shared pages split between the processes that share them, so the sum is not
inflated by forked workers), peak of the sum per phase. Baseline: the 1x row of the same
run; each row prints its growth ratio against it.

16x of all 250 sample documents (4,000 documents, ~5,200 chunks) takes ~5 minutes of
embedding on 2 cores; ``run_all.py`` uses a 60-document base to stay short.

    .venv/bin/python benchmarks/scale.py [--base-docs 250] [--scales 1 4 16] [--questions 216]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import SAMPLE, job_overrides, read_jsonl, repeat_questions, timed_job, write_inputs  # noqa: E402

PHASES = ("setup", "ingest", "answer")


# -- corpus --------------------------------------------------------------------------------------
def perturb(text: str, seed: int, drop: float = 0.05) -> str:
    """``text`` with a seeded ``drop`` share of its words removed (never all of them)."""
    rng = random.Random(seed)
    words = text.split(" ")
    kept = [w for w in words if rng.random() >= drop]
    return " ".join(kept if len(kept) > len(words) // 2 else words[: max(1, len(words) - 1)])


def synthesise(base: list[dict[str, Any]], scale: int) -> list[dict[str, Any]]:
    """``scale`` copies of ``base``: copy 0 as is, copy c with ids ``<id>~c`` and perturbed text."""
    out = list(base)
    for c in range(1, scale):
        out.extend({**d, "doc_id": f"{d['doc_id']}~{c}", "text": perturb(d["text"], seed=c * 1_000_003 + i)}
                   for i, d in enumerate(base))
    return out


# -- memory of a process tree ----------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:  # no smaps_rollup (old kernel): RSS, an overestimate for forked workers
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _kind(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return "workers"
    return "jvm" if exe.startswith("java") else "workers"


class TreeMemory(threading.Thread):
    """Samples the PSS of ``root`` and its descendants by kind; keeps the peaks per phase."""

    def __init__(self, root: int, every: float) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.phase = root, every, "setup"
        self.peaks: dict[str, dict[str, int]] = {p: {} for p in PHASES}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            kids, pids, i = _children(), [self.root], 0
            while i < len(pids):
                pids.extend(kids.get(pids[i], []))
                i += 1
            sums = {"driver": 0, "jvm": 0, "workers": 0}
            for pid in pids:
                sums[_kind(pid, self.root)] += _pss_bytes(pid)
            sums["total"] = sum(sums.values())
            peak = self.peaks.setdefault(self.phase, {})
            for k, v in sums.items():
                peak[k] = max(peak.get(k, 0), v)
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def dir_bytes(path: str) -> int:
    """Disk usage (allocated blocks) of a directory tree."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total


# -- one scale (child process) -----------------------------------------------------------------------
def run_scale(scale: int, base_docs: int, n_questions: int, root: str) -> dict[str, Any]:
    """Tables, ingest, answer for one scale in this process; phases announced on stdout."""
    from sparkrag.config import SparkConfig
    from sparkrag.jobs.answer import run as answer_run
    from sparkrag.jobs.ingest import run as ingest_run
    from sparkrag.spark import get_spark

    documents = synthesise(read_jsonl(SAMPLE / "documents.jsonl")[:base_docs], scale)
    sample_q = read_jsonl(SAMPLE / "questions.jsonl")
    questions = repeat_questions(sample_q, -(-n_questions // len(sample_q)))[:n_questions]
    common = job_overrides(root)
    spark = get_spark(SparkConfig(master="local[2]", app_name=f"bench-scale-{scale}x"))
    write_inputs(spark, common, documents, questions)
    print("PHASE ingest", flush=True)
    ingest, ingest_s = timed_job(ingest_run, common, spark)
    print("PHASE answer", flush=True)
    answer, answer_s = timed_job(answer_run, common + ["--generator", "extractive"], spark)
    spark.stop()
    return {"scale": scale, "documents": len(documents), "chunks": ingest["counts"]["chunks_embedded"],
            "questions": answer["counts"]["answers"], "errors": answer["counts"]["errors"],
            "ingest_s": ingest_s, "answer_s": answer_s, "embed_s": ingest["stage_seconds"]["chunk_embed_write"],
            "load_s": ingest["stage_seconds"]["chroma_load"], "chroma_bytes": dir_bytes(f"{root}/chroma"),
            "loadavg": os.getloadavg()[0]}


def measure_scale(scale: int, args: argparse.Namespace, root: str) -> dict[str, Any]:
    """Run one scale in a child process while sampling its process tree's memory."""
    cmd = [sys.executable, __file__, "--child", "--scales", str(scale), "--base-docs", str(args.base_docs),
           "--questions", str(args.questions), "--root", f"{root}/{scale}x"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid, args.sample_s)
    memory.start()
    result = None
    for line in proc.stdout:
        if line.startswith("PHASE "):
            memory.phase = line.split()[1]
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    proc.wait()
    memory.stop()
    if proc.returncode or result is None:
        raise RuntimeError(f"scale {scale}x exited with {proc.returncode}")
    result["memory"] = memory.peaks
    return result


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-docs", type=int, default=250, help="sample documents in the 1x corpus")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--questions", type=int, default=216, help="fixed question set answered at every scale")
    parser.add_argument("--sample-s", type=float, default=1.0, help="memory sampling interval (s); each scans /proc")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print("RESULT " + json.dumps(run_scale(args.scales[0], args.base_docs, args.questions, args.root)),
              flush=True)
        return []
    root = tempfile.mkdtemp(prefix="bench-scale-")
    results = []
    try:
        for scale in args.scales:
            results.append(measure_scale(scale, args, root))
            r = results[-1]
            print(f"{scale}x: {r['documents']} docs, {r['chunks']} chunks, ingest {r['ingest_s']:.1f} s, "
                  f"answer {r['answer_s']:.1f} s, peak {r['memory']['ingest'].get('total', 0) / 2**20:.0f} MB "
                  f"(load {r['loadavg']:.1f})", flush=True)
            shutil.rmtree(f"{root}/{scale}x", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("results: " + json.dumps(results), flush=True)
    _report(results, args)
    return results


def _mb(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    base = results[0]
    print(f"\n== scale curve (base {args.base_docs} sample documents; {args.questions} questions at every scale; "
          f"ratios vs {base['scale']}x) ==")
    print(f"{'scale':>5} {'docs':>6} {'chunks':>6} {'ingest s':>9} {'x':>6} {'chunks/s':>8} {'answer s':>9} {'x':>6} "
          f"{'chroma MB':>9} {'x':>6} {'peak MB ingest':>14} {'x':>6} {'peak MB answer':>14} {'x':>6}")
    for r in results:
        ing, ans = r["memory"]["ingest"], r["memory"]["answer"]
        print(f"{r['scale']:>4}x {r['documents']:>6} {r['chunks']:>6} {r['ingest_s']:>9.1f} "
              f"{r['ingest_s'] / base['ingest_s']:>5.2f}x {r['chunks'] / r['ingest_s']:>8.1f} "
              f"{r['answer_s']:>9.1f} {r['answer_s'] / base['answer_s']:>5.2f}x "
              f"{_mb(r['chroma_bytes']):>9} {r['chroma_bytes'] / base['chroma_bytes']:>5.2f}x "
              f"{_mb(ing['total']):>14} {ing['total'] / base['memory']['ingest']['total']:>5.2f}x "
              f"{_mb(ans['total']):>14} {ans['total'] / base['memory']['answer']['total']:>5.2f}x")
    print("\npeak PSS by process kind, MB (ingest / answer):")
    for r in results:
        ing, ans = r["memory"]["ingest"], r["memory"]["answer"]
        print(f"{r['scale']:>4}x  " + "   ".join(f"{k} {_mb(ing.get(k, 0))} / {_mb(ans.get(k, 0))}"
                                              for k in ("driver", "jvm", "workers")))


if __name__ == "__main__":
    main()
