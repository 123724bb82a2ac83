"""Files shipped with sparkrag: the SQL queries (``resources/sql``) and job configs (``resources/config``).

In the repository they live once, under ``resources/``; the wheel carries them as package data
of ``sparkrag.resources`` (setup.py maps that package to ``resources/``), so an installed
wheel (a Databricks cluster, ``pip install sparkrag``) finds them without a checkout:

    <site-packages>/sparkrag/resources/sql/run_summary.sql      (wheel)
    <checkout>/resources/sql/run_summary.sql                    (editable install, spark-submit)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sparkrag.errors import ConfigError

__all__ = ["ShippedKind", "shipped_dirs", "shipped_names", "find_shipped"]

ShippedKind = Literal["sql", "config"]
_SUFFIX = {"sql": ".sql", "config": ".yaml"}
_PACKAGE = Path(__file__).resolve().parent  # .../sparkrag


def shipped_dirs(kind: ShippedKind) -> list[Path]:
    """Where shipped files of ``kind`` may be, in lookup order: inside the installed package,
    then the checkout the package was imported from (``lib/sparkrag`` -> ``resources/``)."""
    return [_PACKAGE / "resources" / kind, _PACKAGE.parents[1] / "resources" / kind]


def shipped_names(kind: ShippedKind) -> list[str]:
    """Names (without suffix) of the shipped files of ``kind``, sorted.

    Example:
        >>> "run_summary" in shipped_names("sql") and "databricks" in shipped_names("config")
        True
    """
    suffix = _SUFFIX[kind]
    return sorted({p.stem for d in shipped_dirs(kind) if d.is_dir() for p in d.glob(f"*{suffix}")})


def find_shipped(kind: ShippedKind, name: str, *, option: str) -> Path:
    """The shipped file ``name`` (``run_summary`` or ``run_summary.sql``) of ``kind``.

    Args:
        kind: ``sql`` or ``config``.
        name: a bare name, with or without its suffix.
        option: the command-line option that gave ``name``, for the error message.

    Raises:
        ConfigError: no such shipped file; the message lists the shipped names.

    Example:
        >>> find_shipped("config", "databricks", option="--config").name
        'databricks.yaml'
    """
    suffix = _SUFFIX[kind]
    filename = name if name.endswith(suffix) else f"{name}{suffix}"
    candidates = [d / filename for d in shipped_dirs(kind)] if Path(name).name == name else []
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{option} {name}: no such file (looked in {', '.join(map(str, [Path(name)] + candidates))}); "
                      f"shipped {'queries' if kind == 'sql' else 'configs'}: "
                      f"{', '.join(shipped_names(kind)) or 'none found'}")
