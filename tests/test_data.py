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
    with pytest.raises(DataError, match="expected a 2-D float32 array"):
        DataFile(tmp_path / "vec.npy")
    with pytest.raises(DataError, match="run the generate stage first"):
        DataFile(tmp_path / "none.npy")
