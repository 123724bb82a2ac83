"""Argument parsing shared by every job: ``--config`` YAML, ``--set key=value`` overrides, logging."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from sparkrag.config import RagConfig, load_config, to_dict
from sparkrag.shipped import find_shipped

__all__ = ["base_parser", "rag_config_from_args", "config_path", "setup_logging", "run_rag_job", "entry_point"]


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every job takes."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Any setting of the YAML file can be overridden with --set section.key=value, e.g.\n"
            "  --set names.documents=main.rag.documents --set chroma.mode=server --set chroma.port=8000\n"
            "Sections: spark, tables, names, documents, questions, encoder, chunking, chroma,\n"
            "retrieval, generator, ingest, answer (see resources/config/local.yaml)."
        ),
    )
    parser.add_argument("--config", metavar="YAML", help="settings file, or a shipped one by name: local, databricks "
                        "(default: built-in defaults)")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override one setting; repeatable; VALUE is YAML (true, 3, [a, b], {k: v})",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def rag_config_from_args(args: argparse.Namespace, shortcuts: dict[str, str] | None = None) -> RagConfig:
    """Build the frozen config: YAML, then shortcut flags, then ``--set`` (last wins).

    ``shortcuts`` maps an argparse dest (e.g. ``documents``) to a config key
    (``names.documents``); a shortcut given on the command line becomes an override.
    """
    overrides = []
    for dest, key in (shortcuts or {}).items():
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        overrides.append(f"{key}={json.dumps(value) if not isinstance(value, str) else _yaml_str(value)}")
    overrides.extend(args.overrides)
    return load_config(RagConfig, config_path(args.config), overrides)


def config_path(value: str | None) -> str | None:
    """``--config`` as given when it names a file, else the shipped config of that name
    (``databricks`` -> the wheel's or the checkout's ``resources/config/databricks.yaml``).

    Raises:
        ConfigError: neither a file nor a shipped config; the message lists the shipped ones.
    """
    if value is None or Path(value).is_file():
        return value
    return str(find_shipped("config", value, option="--config"))


def _yaml_str(value: str) -> str:
    # Quote so that YAML keeps it a string ("1e3", "yes", "null" would otherwise change type).
    return json.dumps(value)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("py4j", "chromadb", "httpx", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_config(cfg: RagConfig) -> None:
    """Log the resolved config once, secrets redacted (issue #17)."""
    from sparkrag.redact import redact_config

    logging.getLogger("sparkrag").info("config: %s", json.dumps(redact_config(to_dict(cfg)), default=str))


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return args


def run_rag_job(parser: argparse.ArgumentParser, shortcuts: dict[str, str], job: Callable[[Any, RagConfig], dict],
                argv: Sequence[str] | None, spark: Any, summary: Sequence[str]) -> dict:
    """Parse ``argv``, build the config, run ``job(spark, cfg)``, print its summary, return its record."""
    from sparkrag.spark import get_spark

    args = parse(parser, argv)
    cfg = rag_config_from_args(args, shortcuts)
    log_config(cfg)
    try:
        record = job(spark or get_spark(cfg.spark), cfg)
    except Exception as exc:  # the message may quote a secret option (issue #17)
        _redact_exception(exc, cfg)
        raise
    print(json.dumps({k: record[k] for k in summary if k in record}, indent=2, default=str))
    return record


def _redact_exception(exc: BaseException, cfg: RagConfig) -> None:
    from sparkrag.redact import redact_text, secret_values

    secrets = secret_values(to_dict(cfg))
    if secrets:
        exc.args = tuple(redact_text(a, secrets) if isinstance(a, str) else a for a in exc.args)


def entry_point(run: Callable[..., Any]) -> Callable[..., int]:
    """``main(argv=None, spark=None) -> 0`` around a job's ``run``: console scripts exit with
    ``main()``'s value, so it must be a status (the record stays available from ``run``).

    A deliberate sparkrag error (bad option, unwritable output, lock held...) ends the
    process with its one-line message and exit status 1, not a traceback."""
    from sparkrag.errors import SparkragError

    def main(argv: Sequence[str] | None = None, spark: Any = None) -> int:
        """Entry point for spark-submit, the console script and Databricks python_wheel_task."""
        try:
            run(argv, spark)
        except SparkragError as exc:
            logging.getLogger("sparkrag").debug("job failed", exc_info=True)
            raise SystemExit(f"error: {type(exc).__name__}: {exc}") from None
        return 0

    return main
