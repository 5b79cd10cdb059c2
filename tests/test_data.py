"""Synthetic data and its files: the numbers drawn, the bytes written, and every way a data
file (or rows in memory) is refused, each in one line that names the cause."""

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from torchreg.config import DataConfig
from torchreg.data import (
    CHUNK_ROWS,
    DIGEST_NOTE,
    NPY_MAGIC,
    ArrayRows,
    DataFile,
    as_rows,
    make_block,
    nbytes,
    stream_seed,
    write_dataset,
)
from torchreg.errors import DataError


def refusal(path, *args) -> str:
    """The message DataFile(path, *args) is refused with."""
    with pytest.raises(DataError) as exc:
        DataFile(path, *args)
    return str(exc.value)


def npy(path: Path, text: str, version: int = 1, rows: bytes = b"") -> Path:
    """A .npy file made by hand: the magic, `version`, the header's length, `text`, `rows`."""
    body = (text + "\n").encode("latin1")
    width = 2 if version == 1 else 4
    magic = b"\x93NUMPY" + bytes([version, 0]) + len(body).to_bytes(width, "little")
    path.write_bytes(magic + body + rows)
    return path


def test_linear_data_statistics(params):
    cfg = params.data.model_copy(update={"n_train": 20000})
    rows = make_block(cfg, "train", 0, 20000)
    x, y = rows[:, :-1], rows[:, -1]
    assert x.shape == (20000, 4) and x.dtype == np.float32
    assert np.abs(x.mean(0)).max() < 0.03 and np.abs(x.std(0) - 1).max() < 0.03
    noise = y.astype(np.float64) - (x.astype(np.float64) @ np.array(cfg.true_w) + cfg.true_b)
    # y is stored in float32: rounding (~1e-6 at |y| ~ 20) is far below the noise
    assert noise.std() == pytest.approx(cfg.noise_std, rel=0.05)
    assert abs(noise.mean()) < 4 * cfg.noise_std / 20000**0.5


def test_same_seed_same_bytes_other_seed_or_split_differs(tmp_path, params):
    cfg = params.data
    write_dataset(tmp_path / "a.npy", cfg, "train", 300)
    write_dataset(tmp_path / "b.npy", cfg, "train", 300)
    write_dataset(tmp_path / "t.npy", cfg, "test", 300)
    write_dataset(tmp_path / "s.npy", cfg.model_copy(update={"seed": 1}), "train", 300)
    a = (tmp_path / "a.npy").read_bytes()
    assert a == (tmp_path / "b.npy").read_bytes()
    assert a != (tmp_path / "t.npy").read_bytes()
    assert a != (tmp_path / "s.npy").read_bytes()


def test_full_blocks_do_not_depend_on_total_size(tmp_path, params):
    """Block seeding: every full block is the same whatever the file's total size."""
    write_dataset(tmp_path / "one.npy", params.data, "train", CHUNK_ROWS)
    write_dataset(tmp_path / "more.npy", params.data, "train", CHUNK_ROWS + 10)
    one, more = np.load(tmp_path / "one.npy"), np.load(tmp_path / "more.npy")
    assert np.array_equal(one, more[:CHUNK_ROWS])
    assert not np.array_equal(more[CHUNK_ROWS:], one[:10])


def test_nonlinear_targets(params):
    for target, f in (("quadratic", lambda x: x * x), ("sine", lambda x: np.sin(2 * x))):
        cfg = params.data.model_copy(update={"target": target, "noise_std": 0.0})
        rows = make_block(cfg, "train", 0, 100)
        expected = f(rows[:, :-1].astype(np.float64)) @ np.array(cfg.true_w) + cfg.true_b
        assert np.allclose(rows[:, -1], expected, atol=1e-5)


def test_the_default_params_give_the_bytes_dvc_lock_records(tmp_path):
    """A file's bytes never change for the same params (DVC's cache relies on it): these md5s
    are data/train.npy's and data/test.npy's in dvc.lock, generated from params.yaml's data."""
    cfg = DataConfig(
        seed=0, true_w=(8.1, 2.0, 2.0, 4.0), true_b=1.1, n_train=500, n_test=1000,
        noise_std=0.01, target="linear",
    )  # fmt: skip
    for split, rows, md5 in (
        ("train", 500, "6901cb0e4c1ba37303865239e1cdc79b"),
        ("test", 1000, "a89568a3ac1e65b1bb7c8fd518dc29c2"),
    ):
        write_dataset(tmp_path / "d.npy", cfg, split, rows)
        assert hashlib.md5((tmp_path / "d.npy").read_bytes()).hexdigest() == md5, split


def test_stream_seeds_are_63_bit_and_one_per_stream():
    seeds = {stream_seed(seed, "train", 0) for seed in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert max(seeds).bit_length() == 63


@pytest.mark.parametrize(
    "target,f",
    [("linear", lambda x: x), ("quadratic", lambda x: x * x)],
    ids=["linear", "quadratic"],
)
def test_a_block_is_numpys_draws_from_the_blocks_own_stream(params, target, f):
    """Block 1 of the test split, drawn again with numpy's generator: the features, then the
    noise; y = f(x) @ w + b + noise in float64, stored as float32."""
    cfg = params.data.model_copy(update={"target": target})
    rng = np.random.Generator(np.random.PCG64(stream_seed(cfg.seed, "test", 1)))
    x = rng.standard_normal((300, 4), dtype=np.float32)
    noise = rng.standard_normal(300) * cfg.noise_std
    y = f(x.astype(np.float64)) @ np.array(cfg.true_w) + cfg.true_b + noise
    expected = np.column_stack([x, y.astype(np.float32)])
    assert np.array_equal(make_block(cfg, "test", 1, 300), expected)


def test_y_beyond_float32_is_refused_without_numpy_warnings(params):
    cfg = params.data.model_copy(update={"true_w": (1e308, 1e308)})  # overflows, then inf - inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as exc:
            make_block(cfg, "train", 0, 500)
    assert str(exc.value) == (
        "data: y overflows float32 (beyond +-3.4e38) with these data.true_w, data.true_b and "
        "data.noise_std: use smaller values"
    )


def test_data_file_reads_row_ranges(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 70_000)
    whole = np.load(tmp_path / "d.npy")
    data = DataFile(tmp_path / "d.npy")
    assert (data.rows, data.n_features) == (70_000, 4)
    assert np.array_equal(data.read(123, 4567), whole[123:4567])
    assert np.array_equal(np.concatenate(list(data.blocks(30_000))), whole)
    assert np.array_equal(DataFile(tmp_path / "d.npy").read(), whole)
    for start, stop in ((7, 7), (len(whole), None), (9, 3)):
        assert DataFile(tmp_path / "d.npy").read(start, stop).shape == (0, whole.shape[1])


HEADER = b"{'descr': '<f4', 'fortran_order': False, 'shape': (%s, 2), }"


def npy_with_header(header: bytes) -> bytes:
    """A version 1.0 .npy file of this header text, padded as numpy pads it, and no data."""
    padded = header + b" " * (-(len(NPY_MAGIC) + 4 + len(header) + 1) % 64) + b"\n"
    return NPY_MAGIC + b"\x01\x00" + len(padded).to_bytes(2, "little") + padded


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "not a .npy file"),
        (b"\x93NUMPY\x01", "not a .npy file"),
        (bytes(range(256)) * 4, "not a .npy file"),
        (b"\x93NUMPY garbage", ".npy version 32.103"),
        (b"\x93NUMPY\x09\x00" + bytes(100), ".npy version 9.0"),
        (b"\x93NUMPY\x01\x01" + bytes(100), ".npy version 1.1"),  # numpy refuses it too
        (npy_with_header(b"{[]: 1}"), "unhashable type: 'list'"),
        (npy_with_header(b"[" * 3000), "('EOF in multi-line statement', (2, 0))"),
        (npy_with_header(b"{'descr': '<f4'"), "('EOF in multi-line statement', (2, 0))"),
        (
            npy_with_header(HEADER % (b"0x" + b"f" * 3700)),  # past str()'s 4300 digits
            "its shape <tuple too long to show> is not a size",
        ),
        (npy_with_header(HEADER % b"True"), "its shape (True, 2) is not a size"),
        (
            npy_with_header(HEADER % b"10**3"),
            "malformed node or string on line 1: <ast.BinOp object>",
        ),
        (npy_with_header(HEADER % b"1099511627777"), "its shape (1099511627777, 2) is not a size"),
    ],
    ids=[
        *["empty", "cut-magic", "binary", "garbage", "version-9", "version-1.1", "key-a-list"],
        *["deep", "unclosed", "hex-rows", "bool-rows", "expression", "rows-past-2-40"],
    ],
)
def test_bad_data_files(tmp_path, content, reason):
    (tmp_path / "d.npy").write_bytes(content)
    assert refusal(tmp_path / "d.npy") == f"{tmp_path / 'd.npy'}: not a valid data file ({reason})"


def test_truncated_and_wrong_shape_and_missing(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 500)
    data = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    assert refusal(tmp_path / "cut.npy") == (
        f"{tmp_path / 'cut.npy'}: not a valid data file (shorter than its header says: "
        f"{len(data) // 2} bytes, the header needs {len(data)})"
    )
    np.save(tmp_path / "vec.npy", np.zeros(5, dtype=np.float32))
    assert refusal(tmp_path / "vec.npy") == (
        f"{tmp_path / 'vec.npy'}: a 1-D array of shape (5,); a data file is 2-D (rows, features "
        "then y)"
    )
    none = tmp_path / "none.npy"
    assert refusal(none) == f"{none} not found: run the prepare stage first (dvc repro prepare)"
    assert refusal(none, "pass --data") == f"{none} not found: pass --data"
    assert refusal(none, None) == f"{none} not found"


@pytest.mark.parametrize("shape", [(0, 5), (5, 1)], ids=["no-rows", "no-y"])
def test_a_file_needs_a_row_and_two_columns(tmp_path, shape):
    np.save(tmp_path / "s.npy", np.zeros(shape, dtype=np.float32))
    assert refusal(tmp_path / "s.npy") == (
        f"{tmp_path / 's.npy'}: expected at least 1 row and 2 columns (features, then y), "
        f"got {shape}"
    )


def test_one_row_of_one_feature_is_enough(tmp_path):
    np.save(tmp_path / "s.npy", np.ones((1, 2), dtype=np.float32))
    assert np.array_equal(DataFile(tmp_path / "s.npy").read(), np.ones((1, 2)))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_npy_versions_1_to_3_are_read(tmp_path, version):
    rows = np.arange(6, dtype="<f4").reshape(2, 3)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    path = npy(tmp_path / "v.npy", header, version, rows.tobytes())
    assert np.array_equal(np.load(path), rows)  # a valid file, as numpy reads it
    assert np.array_equal(DataFile(path).read(), rows)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux's /proc")
def test_a_file_that_cannot_be_read_is_named():
    """/proc/self/mem is a regular file whose first bytes cannot be read (EIO)."""
    assert refusal(Path("/proc/self/mem")) == "/proc/self/mem: cannot be read (Input/output error)"


def test_a_file_cut_after_it_was_opened(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 500)
    data = DataFile(tmp_path / "d.npy")
    os.truncate(tmp_path / "d.npy", 1000)
    with pytest.raises(DataError) as exc:
        data.read()
    assert str(exc.value) == f"{tmp_path / 'd.npy'}: file is shorter than its header says"


def test_a_nan_or_inf_names_its_row_in_a_file_or_in_memory(tmp_path):
    rows = np.ones((6, 3), dtype=np.float32)
    rows[4, 2], rows[5, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", rows)
    for source in (DataFile(tmp_path / "nan.npy"), ArrayRows(rows)):
        with pytest.raises(DataError) as exc:
            source.read(2)
        assert str(exc.value) == (
            f"{source.path}: row 4 has a NaN or infinite value; regenerate the data"
        )


def test_rows_in_memory_read_like_a_data_file(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 500)
    data = DataFile(tmp_path / "d.npy")
    assert as_rows(data) is data
    whole = np.load(tmp_path / "d.npy")
    rows = as_rows(whole.astype(np.float64))
    assert isinstance(rows, ArrayRows) and rows.path == Path("<memory>")
    assert (rows.rows, rows.columns, rows.n_features) == (500, 5, 4)
    assert rows.read(10, 20).dtype == np.float32 and np.array_equal(rows.read(10, 20), whole[10:20])
    assert np.array_equal(rows.read(), whole)
    assert np.array_equal(np.concatenate(list(rows.blocks(128))), whole)
    assert np.shares_memory(as_rows(whole).read(), whole)  # float32 rows are not copied
    assert ArrayRows(np.zeros((5, 2))).n_features == 1  # one feature, then y


@pytest.mark.parametrize("shape", [(5,), (5, 1), (2, 2, 2)], ids=["1-D", "no-y", "3-D"])
def test_rows_in_memory_need_features_then_y(shape):
    with pytest.raises(DataError) as exc:
        ArrayRows(np.zeros(shape))
    assert str(exc.value) == f"expected rows of features then y, got shape {shape}"


# --- a data file proves its bytes and its type, or is refused in one line naming the cause -----


@pytest.fixture
def data_file(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 500)
    return tmp_path / "d.npy"


def test_a_written_data_file_carries_its_digest_and_numpy_still_reads_it(data_file, params):
    assert b"# sha256 " in data_file.read_bytes()[:128]
    assert np.array_equal(np.load(data_file), DataFile(data_file).read())
    assert np.array_equal(np.load(data_file), make_block(params.data, "train", 0, 500))


def test_the_rows_start_at_a_multiple_of_64_bytes_as_numpy_aligns_them(data_file):
    offset = np.load(data_file, mmap_mode="r").offset
    assert offset % 64 == 0 and data_file.stat().st_size == offset + nbytes(500, 4)


def test_the_digest_is_checked_once_per_state_of_a_file(data_file, params, monkeypatch):
    checks = []
    verify = DataFile._verify
    monkeypatch.setattr(DataFile, "_verify", lambda self, *a: checks.append(1) or verify(self, *a))
    DataFile(data_file)
    DataFile(data_file)
    assert len(checks) == 1
    write_dataset(data_file, params.data, "train", 500)  # the same bytes in a new file
    DataFile(data_file)
    assert len(checks) == 2


def edit(path, old: bytes, new: bytes, at: int | None = None) -> Path:
    """A copy of `path` with `old` replaced by `new` in its header, or one byte flipped at `at`."""
    data = bytearray(path.read_bytes())
    if at is None:
        assert len(old) == len(new) and data.count(old) == 1
        data = data.replace(old, new)
    else:
        data[at] ^= 0x01
    copy = path.with_name(f"edited-{path.name}")
    copy.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("at", [200, -1], ids=["first-row", "last-byte"])
def test_one_flipped_bit_is_found(data_file, at):
    size = data_file.stat().st_size
    with pytest.raises(DataError, match=r"edited-d.npy: damaged \(its content does not match"):
        DataFile(edit(data_file, b"", b"", at=at % size))


def test_a_damaged_file_is_to_be_rebuilt_as_its_missing_hint_says(data_file):
    damaged = edit(data_file, b"", b"", at=300)
    says = f"{damaged}: damaged (its content does not match the sha256 it carries)"
    assert refusal(damaged) == f"{says}: rebuild it (dvc repro prepare)"
    hint = "run make first (its (data) target)"
    assert refusal(damaged, hint) == f"{says}: rebuild it (its (data) target)"
    assert refusal(damaged, None) == says


def test_only_the_first_digest_note_counts(data_file):
    """A second note after the digest is refused, even one that matches all that precedes it."""
    data = data_file.read_bytes()
    offset = np.load(data_file, mmap_mode="r").offset
    header = data[10:offset].decode().rstrip()  # the dict, then its digest note
    forged = header + DIGEST_NOTE + hashlib.sha256(header.encode() + data[offset:]).hexdigest()
    path = npy(data_file.with_name("forged.npy"), forged, rows=data[offset:])
    assert "damaged" in refusal(path)


def test_a_header_edit_that_keeps_the_size_is_found(data_file):
    """(500, 5) -> (625, 4): the same number of values, other rows: the digest covers it."""
    with pytest.raises(DataError, match="damaged"):
        DataFile(edit(data_file, b"(500, 5)", b"(625, 4)"))


@pytest.mark.parametrize(
    "old,new,message",
    [
        (
            b"'<f4'",
            b"'<i4'",
            r"holds <i4 \(int32\) values; a data file holds little-endian",
        ),
        (b"'<f4'", b"'>f4'", r"holds >f4 \(>f4\) values"),
        (b"'fortran_order': False", b"'fortran_order': True ", "stored in Fortran"),
    ],
    ids=["int32", "big-endian", "fortran"],
)
def test_a_wrong_type_or_order_is_named(data_file, old, new, message):
    with pytest.raises(DataError, match=message):
        DataFile(edit(data_file, old, new))


def test_a_fortran_order_npy_names_the_order_not_the_shape(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((500, 5), dtype=np.float32)))
    assert refusal(tmp_path / "f.npy") == (
        f"{tmp_path / 'f.npy'}: stored in Fortran (column-major) order; a data file stores its "
        "rows one after another (C order): save it with np.save(path, np.ascontiguousarray(array))"
    )


def test_a_huge_header_is_refused_unread_without_numpys_pickle_advice(tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }"
    header += " " * (200_000 - len(header) - 1) + "\n"
    npy = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode()
    (tmp_path / "big.npy").write_bytes(npy + bytes(8))
    with pytest.raises(DataError) as exc:
        DataFile(tmp_path / "big.npy")
    assert "header is 200,000 bytes; a data file's is under 4,096" in str(exc.value)
    assert "pickle" not in str(exc.value)


def test_a_header_of_4096_bytes_is_read_one_more_is_refused(tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }"
    path = npy(tmp_path / "h.npy", header.ljust(4095), rows=bytes(8))  # 4095 + a newline
    assert DataFile(path).read().shape == (1, 2)
    npy(path, header.ljust(4096), rows=bytes(8))
    assert refusal(path) == (
        f"{path}: not a valid data file (its .npy header is 4,097 bytes; a data file's is "
        "under 4,096)"
    )


def test_numpys_reason_is_kept_to_200_characters(tmp_path):
    path = npy(tmp_path / "p.npy", "{'shape': (1, 2) " + "x" * 300 + "}")
    reason = refusal(path).split(": not a valid data file (", 1)[1]
    assert reason.startswith("Cannot parse header: ") and len(reason) == 200 + len(")")


def test_an_error_without_a_message_is_named_by_its_type(data_file, monkeypatch):
    def eof(*args, **kwargs):
        raise EOFError

    monkeypatch.setattr(np.lib.format, "read_array_header_1_0", eof)
    assert refusal(data_file) == f"{data_file}: not a valid data file (EOFError)"


def test_a_plain_npy_without_a_digest_is_read(tmp_path):
    """The user's own data (np.save) carries no digest: checked for type and shape only."""
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.save(tmp_path / "own.npy", rows)
    assert np.array_equal(DataFile(tmp_path / "own.npy").read(), rows)


def test_trailing_bytes_are_refused(data_file):
    with data_file.open("ab") as f:
        f.write(b"\0" * 4)
    assert refusal(data_file) == (
        f"{data_file}: not a valid data file (longer than its header says: 10196 bytes, the "
        "header needs 10192)"
    )


def test_a_dimension_of_2_to_the_40_is_a_size(tmp_path):
    """The largest dimension taken as a size: this file is then only too short for it."""
    content = npy_with_header(HEADER % b"1099511627776")
    (tmp_path / "d.npy").write_bytes(content)
    assert refusal(tmp_path / "d.npy") == (
        f"{tmp_path / 'd.npy'}: not a valid data file (shorter than its header says: "
        f"{len(content)} bytes, the header needs {len(content) + (1 << 40) * 2 * 4})"
    )
