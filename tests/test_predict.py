import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchreg.predict as predict_module
from support import ROOT, one_clean_line, subprocess_env
from torchreg.errors import DataError
from torchreg.model import build_model, save_model
from torchreg.predict import is_header, run
from torchreg.training import seeded


@pytest.fixture
def model_file(tmp_path, params):
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model.b.fill_(0.5)
    save_model(tmp_path / "m.pt", model, params.model, 4)
    return tmp_path / "m.pt"


@pytest.mark.parametrize("text", ["x0,x1,x2,x3\n1,0,0,0\n0,0,0,1\n", "1,0,0,0\n0,0,0,1\n"])
def test_predicts_with_or_without_header(tmp_path, model_file, text):
    (tmp_path / "rows.csv").write_text(text)
    out = tmp_path / "out.csv"
    assert run(model_file, tmp_path / "rows.csv", out) == 2
    lines = out.read_text().splitlines()
    predicted = [float(line.rsplit(",", 1)[1]) for line in lines[1:]]
    assert predicted == [1.5, 4.5]
    assert lines[0].endswith(",predicted") and lines[1].endswith(",1.5")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "no rows to predict"),
        ("x0,x1,x2,x3\n", "no rows to predict"),
        ("1,2,3\n", "row 1 has 3 columns, the model expects 4"),
        ("a,b\n1,2\n", "header has 2 columns but the model expects 4"),
        ("1,2,3,4\n1,2,x,4\n", "row 2 is not all numbers"),
        ("1,2,3,nan\n", "row 1 has a NaN or infinite value"),
        ("1,2,3,4\n1,2,3,1e39\n", "row 2 has a value beyond the model's float32 range"),
        ('1,2,3,4\n1,"2,5",3,4\n', "row 2 is not all numbers"),  # a comma inside a cell
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, model_file, text, expected):
    (tmp_path / "rows.csv").write_text(text)
    with pytest.raises(DataError, match=expected):
        run(model_file, tmp_path / "rows.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_missing_input(tmp_path, model_file):
    with pytest.raises(DataError, match="not found"):
        run(model_file, tmp_path / "none.csv", None)


# --- header detection, echo, streaming, paths, stdin, --help: through the real CLI -----------


def cli(cwd, *args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "torchreg.predict", *args],
        cwd=cwd,
        env=subprocess_env(ROOT / "src"),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result):
    """The predict CLI's error: exit status 2 and one line, `predict: error: ...`, alone."""
    return one_clean_line(result, "predict", alone=True)


@pytest.mark.parametrize(
    "cells,header",
    [
        (["x0", "x1"], True),
        (["", "1"], False),  # an empty cell is a missing value, never a header
        (["x0", ""], False),
        (["x0", "1"], False),
        (["1", "2"], False),
        (["nan", "inf"], False),
    ],
)
def test_a_header_is_a_row_of_names(cells, header):
    assert is_header(cells) is header


@pytest.mark.parametrize(
    "text,expected",
    [
        (",0,0,0\n1,0,0,0\n", "row 1 has an empty cell (column 1)"),
        ("x0,,x2,x3\n1,0,0,0\n", "row 1 has an empty cell (column 2)"),
        ("x0,x1,x2,x3\n1,0,,0\n", "row 2 has an empty cell (column 3)"),
        ("1,0,0,0\n \t,0,0,0\n", "row 2 has an empty cell (column 1)"),
    ],
)
def test_a_row_with_an_empty_cell_is_an_error_not_a_header(tmp_path, model_file, text, expected):
    (tmp_path / "rows.csv").write_text(text)
    with pytest.raises(DataError, match=re.escape(expected)):
        run(model_file, tmp_path / "rows.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_input_text_is_echoed_as_given(tmp_path, model_file):
    (tmp_path / "rows.csv").write_text(' 0.1 ,16777217,1e3,"2.50"\n-0,0.000,1E-1,0\n')
    run(model_file, tmp_path / "rows.csv", tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines() == [
        "x0,x1,x2,x3,predicted",
        f"0.1,16777217,1e3,2.50,{0.1 + 2 * 16777217 + 3 * 1e3 + 4 * 2.5 + 0.5:.7g}",
        "-0,0.000,1E-1,0,0.8",
    ]


def test_spaces_around_cells_are_stripped_in_the_echo(tmp_path, model_file):
    (tmp_path / "rows.csv").write_text("x0, x1 ,x2,x3\n1,\t0 ,\u00a00,0\r\n0,0,0,1\n")
    run(model_file, tmp_path / "rows.csv", tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines() == [
        "x0,x1,x2,x3,predicted",
        "1,0,0,0,1.5",
        "0,0,0,1,4.5",
    ]


def test_rows_are_read_and_written_a_chunk_at_a_time(tmp_path, model_file, monkeypatch):
    monkeypatch.setattr(predict_module, "CHUNK_ROWS", 3)
    seen = []
    real = predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda m, x: seen.append(len(x)) or real(m, x))
    (tmp_path / "rows.csv").write_text("".join(f"{i},0,0,0\n" for i in range(8)))
    assert run(model_file, tmp_path / "rows.csv", tmp_path / "out.csv") == 8
    assert seen == [3, 3, 2]
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 9


def test_a_bad_row_after_some_chunks_leaves_no_output(tmp_path, model_file, monkeypatch):
    monkeypatch.setattr(predict_module, "CHUNK_ROWS", 2)
    (tmp_path / "rows.csv").write_text("1,0,0,0\n" * 5 + "1,0,x,0\n")
    (tmp_path / "out.csv").write_text("old output\n")
    with pytest.raises(DataError, match="row 6 is not all numbers"):
        run(model_file, tmp_path / "rows.csv", tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text() == "old output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "out.csv", "rows.csv"]


def test_on_stdout_the_chunks_before_a_bad_row_are_printed(tmp_path, model_file):
    """Documented behaviour: standard output cannot be taken back, so the chunks before a bad
    row are there; the exit status 2 and the one line on stderr say it is incomplete."""
    good = predict_module.CHUNK_ROWS + 5
    (tmp_path / "rows.csv").write_text("1,0,0,0\n" * good + "1,0,x,0\n")
    result = cli(tmp_path, "--model", "m.pt", "--input", "rows.csv")
    assert f"row {good + 1} is not all numbers" in one_line(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "x0,x1,x2,x3,predicted"
    assert len(lines) - 1 == predict_module.CHUNK_ROWS
    assert set(lines[1:]) == {"1,0,0,0,1.5"}


@pytest.mark.parametrize("text", ["x0,x1,x2,x3\n1,0,x,0\n", "1,0,x,0\n1,0,0,0\n"])
def test_on_stdout_a_bad_first_chunk_prints_nothing(tmp_path, model_file, text):
    (tmp_path / "rows.csv").write_text(text)
    result = cli(tmp_path, "--model", "m.pt", "--input", "rows.csv")
    assert "is not all numbers" in one_line(result)
    assert result.stdout == ""  # not even the header


@pytest.mark.parametrize(
    "output",
    ["rows.csv", "./rows.csv", "sub/../rows.csv", "{tmp}/rows.csv", "link.csv", "hard.csv"],
)
def test_output_equal_to_input_is_refused_before_anything_is_written(tmp_path, model_file, output):
    text = "x0,x1,x2,x3\n1,0,0,0\n"
    (tmp_path / "rows.csv").write_text(text)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to("rows.csv")
    os.link(tmp_path / "rows.csv", tmp_path / "hard.csv")
    output = output.format(tmp=tmp_path)
    line = one_line(cli(tmp_path, "--model", "m.pt", "--input", "rows.csv", "--output", output))
    assert f"--output {Path(output)} is the input file" in line
    assert (tmp_path / "rows.csv").read_text() == text
    assert (tmp_path / "link.csv").is_symlink()
    assert not list(tmp_path.glob(".*.tmp"))


def test_input_dash_reads_standard_input(tmp_path, model_file):
    result = cli(tmp_path, "--model", "m.pt", "--input", "-", stdin="1,0,0,0\n0,0,0,1\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["x0,x1,x2,x3,predicted", "1,0,0,0,1.5", "0,0,0,1,4.5"]
    result = cli(
        tmp_path, "--model", "m.pt", "--input", "-", "--output", "out.csv", stdin="1,0,x,0\n"
    )
    assert "predict: error: standard input: row 1 is not all numbers" in one_line(result)
    assert not (tmp_path / "out.csv").exists()


def test_help_shows_every_option_with_its_default(tmp_path):
    result = cli(tmp_path, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert text.startswith("usage: python -m torchreg.predict ")
    for option, default in [
        ("--model", "(default: models/model.safetensors)"),
        ("--input", "(required, no default)"),
        ("--output", "(default: standard output)"),
    ]:
        assert option in text and default in text


def test_a_model_file_the_user_named_is_missing(tmp_path):
    (tmp_path / "rows.csv").write_text("1,0,0,0\n")
    line = one_line(cli(tmp_path, "--model", "nope.safetensors", "--input", "rows.csv"))
    assert line == "predict: error: nope.safetensors not found"
    line = one_line(cli(tmp_path, "--input", "rows.csv"))
    assert "models/model.safetensors not found: run the train stage first" in line


# --- reads bounded by what a row can need; the real cause named; stdio failures one line ------


def test_a_row_without_line_breaks_is_refused_before_it_is_read_whole(tmp_path, model_file):
    """/dev/zero has no line break: csv would read it whole (GBs) before its field limit."""
    with open("/dev/zero", "rb") as zero:
        result = subprocess.run(
            [sys.executable, "-m", "torchreg.predict", "--model", "m.pt", "--input", "-"],
            cwd=tmp_path, env=subprocess_env(ROOT / "src"), stdin=zero,
            capture_output=True, text=True, timeout=60, preexec_fn=limit_memory,
        )  # fmt: skip
    line = one_line(result)
    assert "standard input: row 1 is longer than 806 characters, more than 4 cells" in line


def limit_memory():
    """A ceiling for the child, so that an unbounded read fails fast instead of filling the
    machine (torch alone maps about 1 GiB of address space)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


PEAK_RSS = (
    "import atexit, resource, runpy, sys; atexit.register(lambda: print('RSS', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
    "sys.argv = ['predict', *sys.argv[1:]]; runpy.run_module('torchreg.predict', "
    "run_name='__main__')"
)


def peak_rss_mib(cwd, *args) -> tuple[subprocess.CompletedProcess, float]:
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args], cwd=cwd, env=subprocess_env(ROOT / "src"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        preexec_fn=limit_memory,
    )  # fmt: skip
    rss = [ln for ln in result.stderr.splitlines() if ln.startswith("RSS ")]
    result.stderr = "\n".join(ln for ln in result.stderr.splitlines() if not ln.startswith("RSS "))
    return result, int(rss[-1].split()[1]) / 1024 if rss else float("nan")


def test_a_100_mb_line_costs_no_more_memory_than_a_short_one(tmp_path, model_file):
    (tmp_path / "short.csv").write_text("1,0,0\n")
    with (tmp_path / "long.csv").open("w") as f:
        f.write("1," * (50 * 2**20) + "1\n")
    short, base = peak_rss_mib(tmp_path, "--model", "m.pt", "--input", "short.csv")
    assert "row 1 has 3 columns" in one_line(short)
    long, peak = peak_rss_mib(tmp_path, "--model", "m.pt", "--input", "long.csv")
    assert "long.csv: row 1 is longer than 806 characters" in one_line(long)
    assert peak - base < 20, f"a 100 MB line took {peak - base:.0f} MiB more than a short one"


def test_a_quoted_cell_cannot_join_lines_into_one_unbounded_row(tmp_path, model_file):
    (tmp_path / "rows.csv").write_text('1,0,0,"' + "1\n" * 2000 + '"\n')
    with pytest.raises(DataError, match="row 1 is longer than 806 characters"):
        run(model_file, tmp_path / "rows.csv", None)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("x0;x1;x2;x3\n1;0;0;0\n", "header has 1 columns but the model expects 4: its cells "
         "are separated by semicolons; the input must be comma-separated"),
        ("x0\tx1\tx2\tx3\n1\t0\t0\t0\n", "separated by tabs"),
        ("1;0;0;0\n", "has 1 columns but the model expects 4: its cells are separated by "
         "semicolons"),
        ("1 0 0 0\n", "separated by spaces"),
        ("1,0,0,0\n1;0;0;0\n", "row 2 has 1 columns, the model expects 4: its cells are "
         "separated by semicolons"),
        ("1,0,0\n", "row 1 has 3 columns, the model expects 4"),  # no separator to blame
    ],
)  # fmt: skip
def test_another_separator_is_named(tmp_path, model_file, text, expected):
    (tmp_path / "rows.csv").write_text(text)
    with pytest.raises(DataError) as exc:
        run(model_file, tmp_path / "rows.csv", None)
    assert expected in str(exc.value)
    if "separated" not in expected:
        assert "separated" not in str(exc.value)


@pytest.mark.parametrize(
    "redirect,expected",
    [
        ("<&-", "predict: error: --input -: standard input is closed"),
        (">&-", "predict: error: standard output is closed"),
        (">/dev/full", "predict: error: cannot write standard output: No space left on device"),
    ],
    ids=["stdin-closed", "stdout-closed", "stdout-full"],
)
def test_closed_or_full_standard_streams_are_one_line(tmp_path, model_file, redirect, expected):
    (tmp_path / "rows.csv").write_text("1,0,0,0\n" * 10_000)
    source = "-" if redirect == "<&-" else "rows.csv"
    command = f'"{sys.executable}" -m torchreg.predict --model m.pt --input {source} {redirect}'
    result = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=subprocess_env(ROOT / "src"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stderr.startswith(expected), result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.returncode == 2, result.stderr


def test_predictions_beyond_float32_are_refused_not_printed(tmp_path, params):
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    with torch.no_grad():
        model.w.copy_(torch.tensor([3e38, 3e38, 0.0, 0.0]))
    save_model(tmp_path / "big.safetensors", model, params.model, 4)
    (tmp_path / "rows.csv").write_text("x0,x1,x2,x3\n1,0,0,0\n1,1,0,0\n")
    with pytest.raises(DataError, match=r"rows.csv: row 3: the model predicts inf \(beyond"):
        run(tmp_path / "big.safetensors", tmp_path / "rows.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_an_output_under_a_regular_file_names_that_file(tmp_path, model_file):
    (tmp_path / "rows.csv").write_text("1,0,0,0\n")
    args = ("--model", "m.pt", "--input", "rows.csv", "--output", "rows.csv/out.csv")
    line = one_line(cli(tmp_path, *args))
    assert line == (
        "predict: error: cannot write rows.csv/out.csv: rows.csv is a file, not a folder "
        "(choose a path under a folder)"
    )


def test_output_equal_to_the_model_is_refused_before_anything_is_written(tmp_path, model_file):
    (tmp_path / "rows.csv").write_text("x0,x1,x2,x3\n1,0,0,0\n")
    before = (tmp_path / "m.pt").read_bytes()
    for output in ("m.pt", "./m.pt"):
        line = one_line(cli(tmp_path, "--model", "m.pt", "--input", "rows.csv", "--output", output))
        assert f"--output {Path(output)} is the model file" in line
    assert (tmp_path / "m.pt").read_bytes() == before


def test_digit_grouping_is_not_a_number_as_in_prepare(tmp_path, model_file):
    """Python's float reads `1_000`; a table's reader (and so the training data) does not."""
    (tmp_path / "rows.csv").write_text("x0,x1,x2,x3\n1_000,0,0,0\n")
    line = one_line(cli(tmp_path, "--model", "m.pt", "--input", "rows.csv"))
    assert "row 2 is not all numbers: ['1_000', '0', '0', '0']" in line


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path, model_file):
    (tmp_path / "rows.csv").write_bytes(b"\xef\xbb\xbfx0,x1,x2,x3\n1,0,0,0\n")
    result = cli(tmp_path, "--model", "m.pt", "--input", "rows.csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "x0,x1,x2,x3,predicted"
