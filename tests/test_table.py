"""A user's table as the data source (data.source: table), through the prepare stage.

Every hostile table is refused with one line that names the file (and the column and the row
where they apply), exit status 2, and nothing written: the outputs of the run before stay
byte for byte, and no temporary file is left. Then the promises: a row's split depends on
its values and data.seed only, the features are standardised on the training split, and the
bytes are the same on every run and from a CSV or a Parquet file of the same values."""

import contextlib
import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from support import ROOT, subprocess_env
from torchreg.config import parse_params
from torchreg.data import CHUNK_ROWS
from torchreg.data.split import SPLITS, assign
from torchreg.data.table import BLOCK_BYTES, Table
from torchreg.errors import ConfigError, DataError

spec = importlib.util.spec_from_file_location("prepare_stage", ROOT / "stages/prepare.py")
prepare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare)

OUTPUTS = ("train.npy", "val.npy", "test.npy", "features.json")
NAMES = ("a", "b", "y")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("TORCHREG_LOG_LEVEL", "WARNING")  # stderr: the error line alone
    return tmp_path


def numbers(n: int, seed: int = 0, columns: int = 3) -> np.ndarray:
    """n distinct rows of values with 3 decimals: the same float64 from text or from Parquet."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(size=(n, columns)) * 10, 3)


def csv(values: np.ndarray, names=NAMES, sep: str = ",") -> str:
    lines = [sep.join(names)] + [sep.join(repr(float(v)) for v in row) for row in values]
    return "\n".join(lines) + "\n"


def put(text: str, row: int, column: str, cell: str) -> str:
    """`text` (a plain CSV) with the cell at `row` (the header is row 1) and `column` replaced."""
    lines = text.split("\n")
    cells = lines[row - 1].split(",")
    cells[lines[0].split(",").index(column)] = cell
    lines[row - 1] = ",".join(cells)
    return "\n".join(lines)


def use_table(raw_params: dict, path: str, seed: int = 0, **table) -> dict:
    """params.yaml (written as JSON, which is YAML) with data.source: table on `path`."""
    raw = copy.deepcopy(raw_params)
    raw["data"]["source"] = "table"
    raw["data"]["seed"] = seed
    raw["data"]["table"] = {"path": path, "target": "y", **table}
    Path("params.yaml").write_text(json.dumps(raw))
    return raw


def write(name: str, content) -> None:
    if callable(content):
        content(Path(name))
    else:
        Path(name).write_bytes(content.encode() if isinstance(content, str) else content)


def outputs() -> dict[str, bytes]:
    return {name: (Path("data") / name).read_bytes() for name in OUTPUTS}


def prepared(raw_params, name: str, content=None, seed: int = 0, **table) -> dict:
    """Run prepare on `content` written at `name`; its features.json."""
    if content is not None:
        write(name, content)
    use_table(raw_params, name, seed, **table)
    prepare.main([])
    assert sorted(os.listdir("data")) == sorted(OUTPUTS)  # no temporary file left
    return json.loads(Path("data/features.json").read_text())


def refused(capsys, raw_params, name: str, content, patch=None, **table) -> str:
    """After a good run (then `patch()`), run prepare on `content` written at `name`: one
    line, exit 2, the good run's outputs untouched and nothing else left in data/. Returns
    the line."""
    prepared(raw_params, "good.csv", csv(numbers(60)))
    before = outputs()
    if patch is not None:
        patch()
    write(name, content)
    use_table(raw_params, name, **table)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        prepare.main([])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"prepare: error: {name}"), err
    assert sorted(os.listdir("data")) == sorted(OUTPUTS)
    assert outputs() == before
    return err.strip()


def split_of_rows(names: list[str]) -> dict[tuple, str]:
    """Each written row (its values in the order of `names`, as the files hold them unscaled)
    and its split; a row found in two splits fails."""
    columns = json.loads(Path("data/features.json").read_text())
    where = [[*columns["features"], columns["target"]].index(n) for n in names]
    found: dict[tuple, str] = {}
    for split in SPLITS:
        for row in np.load(f"data/{split}.npy")[:, where]:
            assert found.setdefault(tuple(row.tolist()), split) == split, row
    return found


# ---------------------------------------------------------------- hostile tables


def test_a_missing_target_column(workdir, raw_params, capsys):
    text = csv(numbers(40), names=("a", "b", "z"))
    line = refused(capsys, raw_params, "t.csv", text)
    assert "no column 'y' (data.table.target)" in line and "'z'" in line


def test_a_misspelt_feature_column(workdir, raw_params, capsys):
    line = refused(capsys, raw_params, "t.csv", csv(numbers(40)), features=["a", "bb"])
    assert "no column 'bb' (data.table.features)" in line and "['a', 'b', 'y']" in line


@pytest.mark.parametrize(
    "before",
    [{}, {3: "", 4: "NA", 5: "NaN"}],  # missing cells above it are not what is named
    ids=["alone", "after-missing-cells"],
)
def test_a_value_that_is_not_a_number(workdir, raw_params, capsys, before):
    text = csv(numbers(40))
    for row, cell in before.items():
        text = put(text, row, "b", cell)
    text = put(text, 7, "b", "twelve")
    line = refused(capsys, raw_params, "t.csv", text, features=["a", "b"])
    assert "t.csv: row 7, column 'b': 'twelve' is not a number (a column of" in line, line


@pytest.mark.parametrize(
    "pad",
    ["t" * 1000, '"' + ("t" * 99 + "\n") * 10 + '"'],  # quoted newlines: also at the block's end
    ids=["one-line-rows", "quoted-newlines"],
)
def test_a_value_that_is_not_a_number_after_the_first_block(workdir, raw_params, capsys, pad):
    """Column types are inferred from the first block (b holds integers there); the row named
    for the bad cell past it is still the row a person counts. `pad`: a text column, left out
    by the default features."""
    rows = BLOCK_BYTES // len(pad) + 50  # just past one block
    bad = rows + 2  # the header is row 1
    body = "".join(f"{i},{i % 7},{i % 5}.5,{pad}\n" for i in range(rows))
    text = f"a,b,y,name\n{body}{rows},seven,1.5,{pad}\n"
    assert BLOCK_BYTES < len(text) < BLOCK_BYTES + (1 << 20)
    line = refused(capsys, raw_params, "t.csv", text)
    assert f"t.csv: row {bad}, column 'b': 'seven' is not a number" in line, line


def missing_cells(text: str) -> str:
    for row, column, cell in [(3, "b", ""), (5, "b", "NaN"), (6, "b", ""), (9, "b", "")]:
        text = put(text, row, column, cell)
    return put(text, 8, "a", "")


def test_missing_values_are_refused_naming_the_column_and_the_first_rows(
    workdir, raw_params, capsys
):
    line = refused(capsys, raw_params, "t.csv", missing_cells(csv(numbers(40))))
    assert "t.csv: column 'b' has missing values (rows 3, 5, 6 ...)" in line, line
    assert "data.table.missing: drop" in line


def test_missing_values_dropped_are_counted(workdir, raw_params):
    values = numbers(40)
    record = prepared(
        raw_params, "t.csv", missing_cells(csv(values)), missing="drop", standardize=False
    )
    assert record["dropped_rows"] == 5
    assert sum(record["rows"].values()) == 35
    kept = np.delete(values, [1, 3, 4, 6, 7], axis=0).astype(np.float32)  # rows 3, 5, 6, 8, 9
    written = np.concatenate([np.load(f"data/{s}.npy") for s in SPLITS])
    assert sorted(map(tuple, written.tolist())) == sorted(map(tuple, kept.tolist()))


@pytest.mark.parametrize(
    ("column", "cell", "said"),
    [
        ("b", "inf", "inf is not a finite number"),
        ("a", "-inf", "-inf is not a finite number"),
        ("b", "1e39", "1e+39 is beyond float32"),
        ("y", "-3.5e38", "-3.5e+38 is beyond float32"),
    ],
)
def test_values_beyond_float32(workdir, raw_params, capsys, column, cell, said):
    text = put(csv(numbers(40)), 6, column, cell)
    line = refused(capsys, raw_params, "t.csv", text)
    assert f"t.csv: row 6, column '{column}': {said}" in line, line


@pytest.mark.parametrize(
    ("at", "column", "value", "said"),
    [
        ([CHUNK_ROWS + 9], "b", np.inf, "row 65546, column 'b': inf is not a finite number"),
        ([4, 9, 11, 12], "a", np.nan, "column 'a' has missing values (rows 5, 10, 12 ...)"),
    ],
    ids=["inf-in-the-second-batch", "missing"],
)
def test_parquet_rows_are_numbered_from_1(workdir, raw_params, capsys, at, column, value, said):
    values = numbers(CHUNK_ROWS + 100)  # two batches
    values[at, NAMES.index(column)] = value

    def parquet(path):
        pq.write_table(pa.table(dict(zip(NAMES, values.T, strict=True))), path)

    line = refused(capsys, raw_params, "t.parquet", parquet)
    assert line.startswith(f"prepare: error: t.parquet: {said}"), line


def test_an_empty_file(workdir, raw_params, capsys):
    assert refused(capsys, raw_params, "t.csv", "").endswith(
        "t.csv: empty file (expected a header row, then rows)"
    )


@pytest.mark.parametrize("features", [[], ["a", "b"]])
def test_a_header_without_rows(workdir, raw_params, capsys, features):
    line = refused(capsys, raw_params, "t.csv", "a,b,y\n", features=features)
    assert line.endswith("t.csv: no values below its header row (columns: ['a', 'b', 'y'])"), line


def test_fewer_rows_than_the_splits_need(workdir, raw_params, capsys):
    line = refused(capsys, raw_params, "t.csv", csv(numbers(3)))
    assert "t.csv: too few rows for the splits (train " in line, line


@pytest.mark.parametrize("constant", ["7", "0.1"])  # 0.1: its float64 mean is not 0.1
def test_a_constant_feature(workdir, raw_params, capsys, constant):
    text = csv(numbers(40))
    for row in range(2, 42):
        text = put(text, row, "b", constant)
    line = refused(capsys, raw_params, "t.csv", text)
    assert "t.csv: feature 'b' is constant on the training split (its std is 0)" in line, line
    assert "data.table.standardize: false" in line

    record = prepared(raw_params, "t.csv", standardize=False)
    assert record["standardize"] is None and record["features"] == ["a", "b"]
    train = np.load("data/train.npy")
    assert (train[:, 1] == np.float32(constant)).all()


def test_duplicate_column_names(workdir, raw_params, capsys):
    text = csv(numbers(40, columns=4), names=("a", "b", "a", "y"))
    line = refused(capsys, raw_params, "t.csv", text)
    assert line.endswith(
        "t.csv: column name 'a' appears 2 times (columns 1, 3): every column needs its own name"
    )


@pytest.mark.parametrize("names", [("y", "a", "b"), ("a", "b", "y")])
def test_a_byte_order_mark_on_the_header(workdir, raw_params, names):
    values = numbers(40)
    record = prepared(raw_params, "t.csv", "\ufeff" + csv(values, names=names), features=["a", "b"])
    assert record["features"] == ["a", "b"] and record["target"] == "y"
    assert sum(record["rows"].values()) == 40


def test_quoted_newlines_in_a_text_column(workdir, raw_params, capsys):
    """A quoted cell spanning lines is one row: the rows after it keep their numbers."""
    values = numbers(40)
    lines = csv(values, names=("a", "b", "y")).split("\n")
    text = "name," + lines[0] + "\n"
    for i, line in enumerate(lines[1:-1]):
        name = f'"car\n{i}\nmodel, ""x"""' if i in (1, 4) else f"car {i}"
        text += f"{name},{line}\n"
    record = prepared(raw_params, "t.csv", text)
    assert record["features"] == ["a", "b"] and sum(record["rows"].values()) == 40

    bad = text.split("\n")
    assert bad[15].startswith("car 10,")  # line 16 of the file, but row 12 of the table
    bad[15] = "car 10,1.5,oops,2.5"
    line = refused(capsys, raw_params, "t.csv", "\n".join(bad), features=["a", "b"])
    assert "t.csv: row 12, column 'b': 'oops' is not a number" in line, line


def test_a_semicolon_separated_file(workdir, raw_params, capsys):
    values = numbers(40)
    line = refused(capsys, raw_params, "t.csv", csv(values, sep=";"))
    assert "no column 'y' (data.table.target)" in line and "data.table.delimiter" in line, line
    assert "semicolons" in line

    prepared(raw_params, "t.csv", delimiter=";")
    semicolons = outputs()
    prepared(raw_params, "c.csv", csv(values))
    assert outputs() == semicolons


def no_line_breaks(path: Path) -> None:
    with path.open("wb") as f:
        f.write(b"a,b,y" + b"1" * (BLOCK_BYTES + (1 << 20)))


def test_a_huge_single_line(workdir, raw_params, capsys):
    line = refused(capsys, raw_params, "t.csv", no_line_breaks)
    assert line.endswith(
        f"t.csv: a row longer than {BLOCK_BYTES >> 20} MiB: not a table of rows (no line "
        "breaks, or a quote that is never closed)"
    ), line


def run_alone(workdir: Path, timeout: float = 120) -> tuple[int, str, int]:
    """The prepare stage as a process of its own: its exit status, its stderr and its peak
    memory (bytes: its own VmHWM, read while it runs; the rusage of a child started by vfork
    carries the parent's peak across exec). A process that hangs fails the test; the timeout
    is generous, for a loaded machine: a hang is for ever."""
    with (workdir / "stderr").open("w+") as err:
        env = subprocess_env(ROOT / "src", TORCHREG_LOG_LEVEL="WARNING")
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "stages/prepare.py")], cwd=workdir, env=env, stderr=err
        )
        deadline, peak = time.monotonic() + timeout, 0
        while process.poll() is None:
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{process.pid}/status").read_text()
                if "VmHWM:" in status:  # not yet a zombie
                    peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) * 1024)
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"prepare hung for {timeout} s")
            time.sleep(0.01)
        err.seek(0)
        return process.returncode, err.read(), peak


@pytest.mark.parametrize(
    "start",
    [b"a,b,y", b"a,b,y\n1,2,3\n4,5\n"],  # one line of 1 GiB; a bad row, then 1 GiB more
    ids=["one-line", "bad-row-then-more"],
)
def test_a_huge_file_is_refused_with_bounded_memory_and_a_clean_exit(workdir, raw_params, start):
    """Arrow reads ahead on threads of its own: once refused, the process must still exit at
    once with status 2 (no hang, no abort from a read under way), and memory stays bounded."""
    use_table(raw_params, "t.csv")
    with open("t.csv", "wb") as f:
        f.write(start)
        f.truncate(1 << 30)  # sparse: no disk used, NUL bytes and no line break after `start`
    status, err, peak = run_alone(workdir)
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("prepare: error: t.csv: "), err
    assert 0 < peak < 512 << 20, peak  # 0: never measured
    assert not Path("data").exists() or not os.listdir("data")


def test_arrow_reads_through_its_own_files(workdir, raw_params, monkeypatch):
    """A Python file handed to Arrow is read from Arrow's threads through Python: after an
    error, a read under way when the process exits hangs it or aborts it."""
    seen = []

    def only_native(real):
        def wrapper(source, *args, **kw):
            seen.append(type(source))
            assert isinstance(source, pa.NativeFile), type(source)
            return real(source, *args, **kw)

        return wrapper

    monkeypatch.setattr(pcsv, "open_csv", only_native(pcsv.open_csv))
    monkeypatch.setattr(pq, "ParquetFile", only_native(pq.ParquetFile))
    prepared(raw_params, "t.csv", csv(numbers(40)))
    pq.write_table(pa.table(dict(zip(NAMES, numbers(40).T, strict=True))), "t.parquet")
    prepared(raw_params, "t.parquet")
    write("bad.csv", put(csv(numbers(40)), 4, "a", "x"))
    use_table(raw_params, "bad.csv", features=["a", "b"])  # read again as text, to name it
    with pytest.raises(SystemExit):
        prepare.main([])
    assert len(seen) >= 6


def nested_parquet(path: Path) -> None:
    values = numbers(40)
    table = pa.table(
        {
            "a": values[:, 0],
            "point": pa.array([{"u": float(v)} for v in values[:, 1]]),
            "tags": pa.array([[int(i)] for i in range(40)]),
            "y": values[:, 2],
        }
    )
    pq.write_table(table, path)


@pytest.mark.parametrize(
    ("column", "kind"), [("point", "struct<u: double>"), ("tags", "list<element: int64>")]
)
def test_a_nested_parquet_column(workdir, raw_params, capsys, column, kind):
    line = refused(capsys, raw_params, "t.parquet", nested_parquet, features=["a", column])
    assert f"t.parquet: column '{column}' holds {kind}, not numbers" in line, line

    record = prepared(raw_params, "t.parquet")  # not chosen: the default features skip it
    assert record["features"] == ["a"] and sum(record["rows"].values()) == 40


def test_a_file_named_parquet_that_is_not(workdir, raw_params, capsys):
    line = refused(capsys, raw_params, "t.parquet", csv(numbers(40)))
    assert "t.parquet: not a Parquet file (" in line, line


def test_a_file_of_an_unknown_kind(workdir, raw_params, capsys):
    line = refused(capsys, raw_params, "t.xlsx", csv(numbers(40)))
    assert line.endswith(
        "t.xlsx: data.table.path must be a CSV (.csv, .tsv, .txt) or a Parquet (.parquet, .pq) file"
    ), line


def appending(path: Path) -> None:
    with path.open("a") as f:
        f.write("1.5,2.5,3.5\n")


def replacing(path: Path) -> None:
    other = path.with_name("other.csv")
    other.write_text(csv(numbers(40, seed=1)))
    os.replace(other, path)


def touching(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("change", [appending, replacing, touching])
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_table_that_changes_while_it_is_read(
    workdir, raw_params, capsys, monkeypatch, change, kind
):
    values = numbers(40)
    if kind == "csv":
        content = csv(values)
    else:

        def content(path):
            pq.write_table(pa.table(dict(zip(NAMES, values.T, strict=True))), path)

    real = Table._arrow_batches

    def changing(self, f):
        for batch in real(self, f):
            yield batch
            change(self.path)

    patch = lambda: monkeypatch.setattr(Table, "_arrow_batches", changing)  # noqa: E731
    line = refused(capsys, raw_params, f"t.{kind}", content, patch)
    assert line.endswith(f"t.{kind}: changed while it was read: run again once it is written")


def test_a_table_that_changes_between_its_header_and_its_rows(
    workdir, raw_params, capsys, monkeypatch
):
    real = Table.batches

    def later(self):
        appending(self.path)
        return real(self)

    patch = lambda: monkeypatch.setattr(Table, "batches", later)  # noqa: E731
    line = refused(capsys, raw_params, "t.csv", csv(numbers(40)), patch)
    assert "t.csv: changed while it was read" in line


# ---------------------------------------------------------------- promises


def test_appended_rows_leave_every_old_row_in_its_split(workdir, raw_params):
    values = numbers(300)
    prepared(raw_params, "t.csv", csv(values), standardize=False)
    before = split_of_rows(list(NAMES))
    assert len(before) == 300 and set(before.values()) == set(SPLITS)

    more = numbers(200, seed=1)
    prepared(raw_params, "t.csv", csv(np.concatenate([values, more])), standardize=False)
    after = split_of_rows(list(NAMES))
    assert len(after) == 500
    assert {row: after[row] for row in before} == before

    # The same through split.assign: the rows alone decide, wherever they stand.
    order = np.argsort(np.array(NAMES, dtype=object), kind="stable")
    codes = assign(values[:, order], 0, 0.15, 0.15)
    shuffled = np.random.default_rng(2).permutation(len(values))
    assert (assign(values[shuffled][:, order], 0, 0.15, 0.15) == codes[shuffled]).all()


def test_a_duplicated_row_lands_in_one_split(workdir, raw_params):
    values = numbers(100)
    zero = numbers(30, seed=3)
    zero[:, 1] = 0.0
    negative = zero.copy()
    negative[:, 1] = -0.0  # written -0.0: the same value as 0.0
    copies = np.concatenate([values, zero, values[::-1], negative, values[::3]])
    record = prepared(raw_params, "t.csv", csv(copies), standardize=False)
    assert sum(record["rows"].values()) == len(copies)
    found = split_of_rows(list(NAMES))  # fails if one row is in two splits
    assert len(found) == 130
    written = np.concatenate([np.load(f"data/{split}.npy") for split in SPLITS])
    as_rows = lambda a: Counter(map(tuple, a.astype(np.float32).tolist()))  # noqa: E731
    assert as_rows(written) == as_rows(copies)  # every copy is there


def test_the_order_of_the_features_leaves_every_row_in_its_split(workdir, raw_params):
    names = ["a", "b", "c", "y"]
    text = csv(numbers(300, columns=4), names=names)
    prepared(raw_params, "t.csv", text, features=["a", "b", "c"], standardize=False)
    first = split_of_rows(names)
    record = prepared(raw_params, "t.csv", features=["c", "a", "b"], standardize=False)
    assert record["features"] == ["c", "a", "b"]
    assert split_of_rows(names) == first


def test_the_seed_changes_the_split(workdir, raw_params):
    values = numbers(2000)
    prepared(raw_params, "t.csv", csv(values), standardize=False)
    first = split_of_rows(list(NAMES))
    record = prepared(raw_params, "t.csv", seed=1, standardize=False)
    second = split_of_rows(list(NAMES))
    assert first.keys() == second.keys()
    moved = sum(first[row] != second[row] for row in first)
    assert moved > 2000 * 0.3  # two independent draws of 70/15/15 differ for ~46% of rows
    for split, share in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        assert abs(record["rows"][split] / 2000 - share) < 0.04


def test_features_and_target_are_standardised_on_the_training_split(workdir, raw_params):
    values = numbers(400)
    values[:, 0] = values[:, 0] * 3 + 50  # far from mean 0, std 1
    values[:, 2] = np.arange(400) * 10 + 4000.25  # far from 0; a target of its own for each row
    record = prepared(raw_params, "t.csv", csv(values))

    train = np.load("data/train.npy").astype(np.float64)
    assert np.abs(train.mean(axis=0)).max() < 1e-5  # the target too
    assert np.abs(train.std(axis=0) - 1).max() < 1e-5

    # Independently, from the CSV: the training rows (found by their target) and their moments.
    table = np.loadtxt("t.csv", delimiter=",", skiprows=1)
    scale = record["standardize"]
    rows = {}
    for s in SPLITS:
        y = np.load(f"data/{s}.npy")[:, 2] * scale["target_std"] + scale["target_mean"]
        rows[s] = table[np.rint((y - 4000.25) / 10).astype(int)]
    mean, std = rows["train"].mean(axis=0), rows["train"].std(axis=0)
    assert scale["mean"] == pytest.approx(mean[:2].tolist(), rel=1e-12)
    assert scale["std"] == pytest.approx(std[:2].tolist(), rel=1e-12)
    assert [scale["target_mean"], scale["target_std"]] == pytest.approx(
        [mean[2], std[2]], rel=1e-12
    )
    for split in SPLITS:
        written = np.load(f"data/{split}.npy")
        np.testing.assert_allclose(written, (rows[split] - mean) / std, rtol=1e-6, atol=1e-6)
    assert np.abs(rows["val"].mean(axis=0) - mean).max() > 0  # not their own moments


def test_the_same_bytes_on_every_run(workdir, raw_params):
    values = numbers(500, columns=4)
    text = put(csv(values, names=("a", "b", "c", "y")), 9, "c", "")
    prepared(raw_params, "t.csv", text, missing="drop")
    first = outputs()
    shutil.rmtree("data")
    prepared(raw_params, "t.csv", missing="drop")
    assert outputs() == first

    # prepare.run, to other paths: the same bytes again.
    cfg = parse_params(use_table(raw_params, "t.csv", missing="drop")).data
    out = {split: Path(f"again/{split}.npy") for split in SPLITS}
    prepare.run(cfg, out, Path("again/features.json"))
    assert {name: Path("again", name).read_bytes() for name in OUTPUTS} == first


def test_parquet_and_csv_of_the_same_values_give_the_same_bytes(workdir, raw_params):
    values = numbers(300, columns=4)
    values[:, 1] = np.arange(300) % 17  # an integer column
    names = ("a", "n", "b", "y")
    text = csv(values, names=names).replace(".0,", ",")  # integers written as integers
    prepared(raw_params, "t.csv", text)
    from_csv = outputs()

    columns = {name: values[:, j] for j, name in enumerate(names)}
    columns["n"] = columns["n"].astype(np.int64)
    pq.write_table(pa.table(columns), "t.parquet")
    record = prepared(raw_params, "t.parquet")
    assert record["features"] == ["a", "n", "b"]
    assert outputs() == from_csv


# --- more of each class, found by trying to break it ------------------------------------


def test_a_header_that_is_not_utf8(workdir, raw_params, capsys):
    latin1 = csv(numbers(60)).replace("a,", "caf\xe9,", 1).encode("latin-1")
    line = refused(capsys, raw_params, "t.csv", latin1)
    assert line.endswith(
        "t.csv: its header is not UTF-8 text: save the table as UTF-8 (e.g. iconv -f latin1 "
        "-t utf-8)"
    )


def test_a_cell_that_is_not_utf8(workdir, raw_params, capsys):
    text = csv(numbers(60)).encode()
    text = text[: text.rindex(b"\n", 0, -1) + 1] + b"1\xe9,2,3\n"
    line = refused(capsys, raw_params, "t.csv", text, features=["a", "b"])
    assert "t.csv: not UTF-8 text (" in line and "save the table as UTF-8" in line


@pytest.mark.parametrize("name", ["1", "2.5", " ", "nan"])
def test_a_column_named_like_a_number_or_nothing(workdir, raw_params, capsys, name):
    """predict finds columns by a header it tells from rows: such a name could never be read
    back, so prepare refuses it."""
    text = csv(numbers(60)).replace("a,", f"{name},", 1)
    line = refused(capsys, raw_params, "t.csv", text, features=[])
    assert "is empty or a number: predict finds columns by name" in line


def test_validate_checks_the_table_before_dvc_removes_anything(workdir, raw_params):
    """DVC removes prepare's outputs before it runs prepare: the validate stage, run first,
    refuses a table that is not there, lacks the target, or has no feature plot.feature, in
    one line."""
    spec = importlib.util.spec_from_file_location("validate_stage", ROOT / "stages/validate.py")
    validate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validate)
    write("t.csv", csv(numbers(60)))
    raw_params["plot"]["feature"] = 1
    use_table(raw_params, "t.csv")
    validate.run(Path("params.yaml"), Path("ok"))  # a good table: passes
    raw_params["plot"]["feature"] = 2  # the default, 3, or any past the table's features
    use_table(raw_params, "t.csv")
    with pytest.raises(ConfigError) as err:
        validate.run(Path("params.yaml"), Path("ok"))
    assert str(err.value) == (
        "plot.feature = 2 is not a numeric feature of t.csv: allowed 0..1 (its 2 numeric "
        "features: a, b); choose the one plots/fit.png draws against the target, e.g. "
        "-S plot.feature=0"
    )
    raw_params["plot"]["feature"] = 0
    for table, says in (
        ({"target": "nope"}, "t.csv: no column 'nope' (data.table.target)"),
        ({"path": "gone.csv"}, "gone.csv not found"),
    ):
        use_table(raw_params, table.get("path", "t.csv"), target=table.get("target", "y"))
        with pytest.raises(DataError) as err:
            validate.run(Path("params.yaml"), Path("ok"))
        assert says in str(err.value)
    raw = json.loads(Path("params.yaml").read_text())
    raw["data"]["source"] = "synthetic"  # DVC needs the dependency all the same
    Path("params.yaml").write_text(json.dumps(raw))
    with pytest.raises(DataError) as err:
        validate.run(Path("params.yaml"), Path("ok"))
    assert "data.table.path = gone.csv: not a file; prepare lists it as a dependency" in str(
        err.value
    )


@pytest.mark.parametrize("delimiter", ["é", " ", '"', "a", "7", "\n", ",,", ""])
def test_a_delimiter_arrow_cannot_split_on_is_refused_in_params(raw_params, delimiter):
    raw = copy.deepcopy(raw_params)
    raw["data"]["table"]["delimiter"] = delimiter
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert str(err.value).startswith("params.yaml: data.table.delimiter = ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("delimiter", [",", ";", "|", "\t", ":"])
def test_the_usual_delimiters_are_accepted(raw_params, delimiter):
    raw = copy.deepcopy(raw_params)
    raw["data"]["table"]["delimiter"] = delimiter
    assert parse_params(raw).data.table.delimiter == delimiter


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a,b,y\n1,2,3\n".encode("utf-16"), "not UTF-8 text (UTF-16 or UTF-32"),
        ("a,b,y\n1,2,3\n".encode("utf-16-be"), "not UTF-8 text (UTF-16 or UTF-32"),
        (__import__("gzip").compress(b"a,b,y\n1,2,3\n"), "gzip-compressed, not a CSV"),
    ],
    ids=["utf-16", "utf-16-be-no-bom", "gzip"],
)
def test_a_csv_in_another_encoding_or_compressed_says_so(
    workdir, raw_params, capsys, content, expected
):
    line = refused(capsys, raw_params, "t.csv", content)
    assert expected in line, line


def test_decimal_commas_are_named(workdir, raw_params, capsys):
    text = "a;b;y\n" + "".join(f"{i},5;{i};{i * 2},25\n" for i in range(40))
    line = refused(capsys, raw_params, "t.csv", text, delimiter=";", features=["a", "b"])
    assert "'0,5' is not a number (a decimal comma" in line and "e.g. 0.5" in line, line


@pytest.mark.parametrize("given", ["\\t", "tab", "\t"])
def test_a_tab_delimiter_can_be_written_as_backslash_t(workdir, raw_params, given):
    record = prepared(raw_params, "t.tsv", csv(numbers(40), sep="\t"), delimiter=given)
    assert record["features"] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad", "says"),
    [("1,a,2,9", "a row with another number of cells"), ("1,caf\xe9,2", "not UTF-8 text")],
    ids=["ragged", "latin-1"],
)
def test_a_late_problem_in_a_text_column_is_one_line(workdir, raw_params, capsys, bad, says):
    """features: [] reads the text columns once to count their values (Table.settle): a row
    past the first block that is not a row of the table is told as the main read tells it."""
    rows = BLOCK_BYTES // 12 + 1000
    body = "".join(f"{i},{'ab'[i % 2]},{i % 7}.5\n" for i in range(rows))
    content = ("a,kind,y\n" + body).encode() + bad.encode("latin-1") + b"\n"
    line = refused(capsys, raw_params, "t.csv", content)
    assert says in line, line
