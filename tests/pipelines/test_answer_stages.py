"""The generate stage's row handling, without Spark: which rows reach the model."""

from __future__ import annotations

from sparkrag.pipelines.answer_stages import _isolated_answers
from sparkrag.generation.generate import Generation
from sparkrag.generation.prompt import ABSTAIN_TEXT


class RecordingModel:
    """Stands in for the LLM (what is tested is which prompts reach it, not what it says)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> list[Generation]:
        self.calls.append(list(prompts))
        return [Generation(f"answer to {p}", prompt_tokens=3, completion_tokens=2) for p in prompts]


def _row(qid: str, contexts: list[dict] | None, error: str | None = None) -> dict:
    return {"question_id": qid, "question": qid, "contexts": contexts, "prompt": f"prompt {qid}", "error": error}


ROWS = [_row("a", [{"text": "ctx"}]), _row("b", []), _row("c", None), _row("d", [{"text": "x"}], error="boom")]


def test_rows_without_context_abstain_without_calling_the_model():
    model = RecordingModel()
    out = _isolated_answers(ROWS, model, extractive=False, abstain_without_context=True)
    assert model.calls == [["prompt a"]]
    assert out[0][0].text == "answer to prompt a"
    for gen, ms in out[1:3]:
        assert (gen.text, gen.completion_tokens, ms) == (ABSTAIN_TEXT, 0, 0.0)
    assert out[3] == (None, 0.0)  # a failed row stays failed


def test_no_context_generate_sends_context_free_prompts_to_the_model():
    model = RecordingModel()
    out = _isolated_answers(ROWS, model, extractive=False, abstain_without_context=False)
    assert model.calls == [["prompt a", "prompt b", "prompt c"]]
    assert [g.text for g, _ in out[:3]] == ["answer to prompt a", "answer to prompt b", "answer to prompt c"]


def test_a_batch_without_any_context_never_calls_the_model():
    model = RecordingModel()
    out = _isolated_answers(ROWS[1:3], model, extractive=True, abstain_without_context=True)
    assert model.calls == [] and all(g.text == ABSTAIN_TEXT for g, _ in out)
