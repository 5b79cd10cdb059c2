"""params.yaml survives `dvc exp run -S` untouched but for the value set: DVC rewrites the file
through its own YAML writer (dvc.utils.hydra.apply_overrides, what `-S` calls), so the file
is written in the style that writer produces (block lists), and a commit after an experiment
shows only the change."""

import difflib
import shutil

from support import ROOT


def test_dash_s_changes_only_the_line_it_sets(tmp_path):
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    before = path.read_text().splitlines()
    apply_overrides(path, ["train.lr=0.002"])
    changed = [
        line
        for line in difflib.unified_diff(before, path.read_text().splitlines(), lineterm="", n=0)
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    assert [line.split("#")[0].strip() for line in changed] == ["-  lr: auto", "+  lr: 0.002"], (
        changed
    )
