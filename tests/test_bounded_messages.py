"""Error messages echo a bounded part of what the user gave, and build it in bounded time."""

import subprocess
import sys
import time

import pytest

from support import ROOT, subprocess_env
from torchreg.config import MAX_VALUES, ConfigError, load_params, parse_params
from torchreg.errors import shown

PARAMS = (ROOT / "params.yaml").read_text()


def billion_laughs(levels: int = 9) -> str:
    """A YAML value of 10**levels strings, written in a few lines through aliases."""
    lines = ['bomb0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"bomb{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines)


def stage(tmp_path, text: str) -> tuple[subprocess.CompletedProcess, float]:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages/validate.py"), "--out", "params.ok"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=subprocess_env(ROOT / "src", inherit=False),
    )  # fmt: skip
    return result, time.perf_counter() - start


@pytest.mark.parametrize(
    "where",
    [
        "data:\n  true_w: *a9",  # a field that takes a list
        "train:\n  lr: *a9",  # a field that takes a number
        "train:\n  lr_bomb: *a9",  # an unknown key
        "extra: *a9",  # an unknown section
    ],
)
def test_billion_laughs_fails_fast_in_one_short_line(tmp_path, where):
    section, _, rest = where.partition("\n")
    anchors = "anchors:\n  " + billion_laughs().replace("\n", "\n  ") + "\n"
    if rest:  # the alias as the section's first key
        text = anchors + PARAMS.replace(f"\n{section}\n", f"\n{section}\n{rest}\n", 1)
    else:
        text = f"{anchors}{PARAMS}\n{where}\n"
    result, seconds = stage(tmp_path, text)
    assert result.returncode == 2, result.stderr
    assert seconds < 5
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "params.ok").exists()


def test_a_one_megabyte_string_gives_a_short_line(tmp_path):
    big = "x" * 10**6
    for text in (
        PARAMS.replace("target: linear", f"target: {big}"),
        PARAMS.replace("  lr: auto", f"  ? {big}\n  : 0.001"),  # as a key
        PARAMS.replace("  lr: auto", f"  lr: !!float {big}"),  # a tag its value cannot hold
    ):
        result, _ = stage(tmp_path, text)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and len(lines[0]) < 300, result.stderr[:500]
        assert "xxxx..." in lines[0] or "x..." in lines[0]


@pytest.mark.parametrize("field", ["true_w", "noise_std", "bomb"])
def test_validation_and_message_stay_bounded_past_the_size_check(monkeypatch, raw_params, field):
    """Even with the size check off, pydantic and the message never walk the shared values."""
    monkeypatch.setattr("torchreg.config._check_size", lambda raw, source: None)
    nested: list = ["lol"] * 10
    for _ in range(9):
        nested = [nested] * 10
    raw_params["data"][field] = nested
    start = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        parse_params(raw_params)
    assert time.perf_counter() - start < 5
    assert len(str(exc.value)) < 300, str(exc.value)[:500]


def test_a_self_referencing_alias_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS + "loop: &l [*l]\n")
    with pytest.raises(ConfigError, match=f"over {MAX_VALUES:,} values"):
        load_params(path)


def test_shown_is_bounded_and_quotes_strings():
    assert shown("abc") == "'abc'"
    assert shown(-1) == "-1"
    assert shown(0.001) == "0.001"
    assert len(shown("x" * 10**6)) == 80
    nested: list = ["lol"] * 10
    for _ in range(30):  # 10**30 strings if expanded
        nested = [nested] * 10
    assert len(shown(nested)) <= 80
    assert shown(10**5000) == "<int too long to show>"


@pytest.mark.parametrize(
    "nested",
    [
        "".join(f"\n{'  ' * (i + 1)}k{i}:" for i in range(1500)),  # block maps
        "{a: " * 5000 + "1" + "}" * 5000,  # flow maps
        "[" * 5000 + "]" * 5000,  # flow lists
    ],
    ids=["block-maps", "flow-maps", "flow-lists"],
)
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path, nested):
    result, seconds = stage(tmp_path, PARAMS + f"\ndeep: {nested}\n")
    assert result.stderr.splitlines() == [
        "validate: error: params.yaml: nested too deeply: params are a few sections of scalars "
        "and lists"
    ], result.stderr[-2000:]
    assert result.returncode == 2 and seconds < 30


def test_a_params_file_of_many_megabytes_is_refused_unread(tmp_path):
    result, _ = stage(tmp_path, PARAMS + "#" * (5 << 20) + "\n")
    assert result.stderr.splitlines() == [
        "validate: error: params.yaml: over 4 MiB: a params file is a few KB of sections "
        "(data, model, train, plot)"
    ]
