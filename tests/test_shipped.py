"""sparkrag.shipped in a checkout: shipped queries and configs by name, and clear misses.
(From an installed wheel: tests/test_packaging.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkrag.errors import ConfigError
from sparkrag.jobs._common import base_parser, config_path, rag_config_from_args
from sparkrag.jobs.sql import main as sql_main
from sparkrag.shipped import find_shipped, shipped_dirs, shipped_names

ROOT = Path(__file__).resolve().parents[1]


def test_names_are_the_files_under_resources():
    assert shipped_names("sql") == sorted(p.stem for p in (ROOT / "resources" / "sql").glob("*.sql"))
    assert shipped_names("config") == ["databricks", "local"]
    # The installed package's folder is searched before the checkout's.
    assert shipped_dirs("sql") == [ROOT / "lib" / "sparkrag" / "resources" / "sql", ROOT / "resources" / "sql"]


@pytest.mark.parametrize("name", ["run_summary", "run_summary.sql"])
def test_find_a_query_with_or_without_its_suffix(name):
    assert find_shipped("sql", name, option="--file") == ROOT / "resources" / "sql" / "run_summary.sql"


def test_a_path_is_never_looked_up_among_shipped_files(tmp_path):
    with pytest.raises(ConfigError, match=r"--file sub/run_summary: no such file \(looked in sub/run_summary\)"):
        find_shipped("sql", "sub/run_summary", option="--file")


def test_config_by_name_file_or_none(tmp_path, monkeypatch):
    assert config_path(None) is None
    assert Path(config_path("databricks")) == ROOT / "resources" / "config" / "databricks.yaml"
    own = tmp_path / "databricks"  # a file of that name wins over the shipped config
    own.write_text("tables: {backend: delta-rs}\n")
    monkeypatch.chdir(tmp_path)
    assert config_path("databricks") == "databricks"
    with pytest.raises(ConfigError, match=r"--config databrick: no such file .*shipped configs: databricks, local"):
        config_path("databrick")


def test_jobs_load_a_shipped_config_by_name():
    args = base_parser("sparkrag-test", "").parse_args(["--config", "databricks", "--set", "names.runs=x.y.runs"])
    cfg = rag_config_from_args(args)
    assert cfg.tables.backend == "native" and cfg.names.runs == "x.y.runs" and cfg.generator.kind == "chatqa"


def test_sql_list_prints_every_shipped_query_without_spark(capsys):
    assert sql_main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == shipped_names("sql")
    assert any(line.startswith("run_summary") and "Run summary" in line for line in lines)
