from pathlib import Path

import numpy as np
import pytest

from torchreg.data import CHUNK_ROWS, DataFile, make_block, write_dataset
from torchreg.errors import DataError


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


def test_data_file_reads_row_ranges(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 70_000)
    whole = np.load(tmp_path / "d.npy")
    data = DataFile(tmp_path / "d.npy")
    assert (data.rows, data.n_features) == (70_000, 4)
    assert np.array_equal(data.read(123, 4567), whole[123:4567])
    assert np.array_equal(np.concatenate(list(data.blocks(30_000))), whole)
    assert np.array_equal(DataFile(tmp_path / "d.npy").read(), whole)


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "not a valid data file"),
        (b"\x93NUMPY garbage", "not a valid data file"),
        (bytes(range(256)) * 4, "not a valid data file"),
    ],
)
def test_bad_data_files(tmp_path, content, expected):
    (tmp_path / "d.npy").write_bytes(content)
    with pytest.raises(DataError, match=expected):
        DataFile(tmp_path / "d.npy")


def test_truncated_and_wrong_shape_and_missing(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 500)
    data = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.npy: not a valid data file"):
        DataFile(tmp_path / "cut.npy")
    np.save(tmp_path / "vec.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(DataError, match=r"a 1-D array of shape \(5,\); a data file is 2-D"):
        DataFile(tmp_path / "vec.npy")
    with pytest.raises(DataError, match="run the generate stage first"):
        DataFile(tmp_path / "none.npy")


# --- a data file proves its bytes and its type, or is refused in one line naming the cause -----


@pytest.fixture
def data_file(tmp_path, params):
    write_dataset(tmp_path / "d.npy", params.data, "train", 500)
    return tmp_path / "d.npy"


def test_a_written_data_file_carries_its_digest_and_numpy_still_reads_it(data_file, params):
    assert b"# sha256 " in data_file.read_bytes()[:128]
    assert np.array_equal(np.load(data_file), DataFile(data_file).read())
    assert np.array_equal(np.load(data_file), make_block(params.data, "train", 0, 500))


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
    with pytest.raises(DataError, match=r"Fortran \(column-major\) order.*ascontiguousarray"):
        DataFile(tmp_path / "f.npy")


def test_a_huge_header_is_refused_unread_without_numpys_pickle_advice(tmp_path):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }"
    header += " " * (200_000 - len(header) - 1) + "\n"
    npy = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode()
    (tmp_path / "big.npy").write_bytes(npy + bytes(8))
    with pytest.raises(DataError) as exc:
        DataFile(tmp_path / "big.npy")
    assert "header is 200,000 bytes; a data file's is under 4,096" in str(exc.value)
    assert "pickle" not in str(exc.value)


def test_a_plain_npy_without_a_digest_is_read(tmp_path):
    """The user's own data (np.save) carries no digest: checked for type and shape only."""
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.save(tmp_path / "own.npy", rows)
    assert np.array_equal(DataFile(tmp_path / "own.npy").read(), rows)


def test_trailing_bytes_are_refused(data_file):
    with data_file.open("ab") as f:
        f.write(b"\0" * 4)
    with pytest.raises(DataError, match="longer than its header says"):
        DataFile(data_file)
