"""Each stage's --help: the whole first paragraph, and a help text and default per option."""

import runpy

import pytest

from support import ROOT


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate", "plot"])
def test_help_describes_every_option(stage, capsys):
    main = runpy.run_path(str(ROOT / "stages" / f"{stage}.py"))["main"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    description = " ".join(text.split("\n\n")[1].split())
    assert description.endswith("."), description  # not cut off mid-sentence
    # The formatter adds a default only to options that have a help text: one per option.
    assert text.count("(default:") == text.count("\n  --")
