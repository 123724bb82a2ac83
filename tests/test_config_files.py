"""The shipped YAML configs load into RagConfig; bad keys and types are named; --set and shortcuts win."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from sparkrag.config import RagConfig, load_config
from sparkrag.errors import ConfigError
from sparkrag.jobs._common import base_parser, rag_config_from_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "resources" / "config"
LOCAL = CONFIG_DIR / "local.yaml"
DATABRICKS = CONFIG_DIR / "databricks.yaml"


def _keys(cls: type, prefix: str = "") -> set[str]:
    """Every leaf setting of a config dataclass, dotted (``generator.model``)."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        keys |= _keys(hints[f.name], name + ".") if dataclasses.is_dataclass(hints[f.name]) else {name}
    return keys


def _yaml_keys(node: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in node.items():
        name = f"{prefix}{key}"
        # A section is a mapping whose keys are settings; a Mapping-valued setting (spark.conf,
        # retrieval.where_columns) is a leaf.
        keys |= _yaml_keys(value, name + ".") if isinstance(value, dict) and not prefix else {name}
    return keys


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(RagConfig, path)
    assert isinstance(cfg, RagConfig)
    hash(cfg.generator)  # frozen and hashable, as executors receive it


def test_shipped_configs_are_the_two_environments():
    assert {p.name for p in CONFIG_DIR.glob("*.yaml")} == {"local.yaml", "databricks.yaml"}


def test_local_yaml_lists_every_setting():
    """local.yaml is the reference the jobs' --help points to: no setting may be missing."""
    with open(LOCAL, encoding="utf-8") as fh:
        listed = _yaml_keys(yaml.safe_load(fh))
    missing = sorted(_keys(RagConfig) - listed)
    assert not missing, f"add to resources/config/local.yaml: {missing}"


def test_local_yaml_is_a_laptop():
    cfg = load_config(RagConfig, LOCAL)
    assert cfg.spark.master == "local[2]"
    assert (cfg.tables.backend, cfg.tables.root) == ("auto", "data/tables")
    assert (cfg.chroma.mode, cfg.chroma.path) == ("embedded", "data/chroma")
    assert cfg.encoder.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.generator.kind == "extractive"
    assert cfg.documents.metadata == ("source", "lang")  # columns of resources/sample/documents.jsonl
    # Apart from the sample's metadata columns, local.yaml states the built-in defaults.
    assert dataclasses.replace(cfg, documents=RagConfig().documents) == RagConfig()


def test_databricks_yaml_is_unity_catalog_native_delta_chatqa_bf16():
    cfg = load_config(RagConfig, DATABRICKS)
    names = dataclasses.asdict(cfg.names)
    assert names == {k: f"main.rag.{k}" for k in names}
    assert cfg.tables.backend == "native"
    assert cfg.chroma.path.startswith("/Volumes/main/rag/") and cfg.answer.chroma_access == "snapshot"
    assert (cfg.generator.kind, cfg.generator.model, cfg.generator.dtype) == (
        "chatqa", "nvidia/Llama3-ChatQA-1.5-8B", "bfloat16")


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("generator:\n  kind: chatqa\n  modle: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown config key in generator: generator\.modle"):
        load_config(RagConfig, path)
    path.write_text("generatr:\n  kind: chatqa\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown config key: generatr"):
        load_config(RagConfig, path)
    with pytest.raises(ConfigError, match=r"retrieval\.topk"):
        load_config(RagConfig, LOCAL, ["retrieval.topk=3"])


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("chroma:\n  port: eight thousand\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"chroma\.port: expected an integer, got 'eight thousand'"):
        load_config(RagConfig, path)
    with pytest.raises(ConfigError, match=r"generator\.kind: expected one of 'extractive', 'llm', 'chatqa', got 'gpt'"):
        load_config(RagConfig, LOCAL, ["generator.kind=gpt"])
    with pytest.raises(ConfigError, match=r"documents\.metadata: expected a list"):
        load_config(RagConfig, LOCAL, ["documents.metadata=source"])


def _parser():
    parser = base_parser("sparkrag-test", "")
    parser.add_argument("--documents")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--full-refresh", action="store_true")
    return parser


SHORTCUTS = {"documents": "names.documents", "limit": "answer.limit", "full_refresh": "ingest.full_refresh"}


def test_set_overrides_win_over_the_file():
    args = _parser().parse_args(["--config", str(DATABRICKS), "--set", "generator.kind=extractive",
                                 "--set", "retrieval.top_k=3", "--set", "spark.conf={spark.foo: bar}"])
    cfg = rag_config_from_args(args)
    assert cfg.generator.kind == "extractive"  # the file says chatqa
    assert cfg.generator.dtype == "bfloat16"  # untouched keys keep the file's value
    assert cfg.retrieval.top_k == 3 and cfg.spark.conf == {"spark.foo": "bar"}


def test_shortcuts_are_overrides_and_set_wins_over_them():
    parser = _parser()
    cfg = rag_config_from_args(parser.parse_args(["--config", str(LOCAL), "--documents", "1e3", "--limit", "5",
                                                  "--full-refresh"]), SHORTCUTS)
    assert cfg.names.documents == "1e3"  # quoted: stays a string, not the float 1000.0
    assert cfg.answer.limit == 5 and cfg.ingest.full_refresh is True
    # Flags left out leave the file's values; --set is applied after the shortcuts.
    cfg = rag_config_from_args(parser.parse_args(["--config", str(LOCAL), "--documents", "a.b",
                                                  "--set", "names.documents=c.d"]), SHORTCUTS)
    assert cfg.names.documents == "c.d" and cfg.answer.limit is None and cfg.ingest.full_refresh is False
    with pytest.raises(ConfigError, match=r"override 'names\.documents': expected key=value"):
        rag_config_from_args(parser.parse_args(["--set", "names.documents"]))
