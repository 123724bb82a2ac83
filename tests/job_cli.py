"""Shared check of a job's command line: ``--help`` exits 0 and prints every option."""

from __future__ import annotations

from typing import Any, Callable

import pytest


def help_options(main: Callable[[list[str]], Any], build_parser: Callable[[], Any], capsys) -> set[str]:
    """The parser's ``--options``, after checking that ``main(["--help"])`` exits 0 and lists each of them."""
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")}
    for option in options:
        assert option in text
    return options
