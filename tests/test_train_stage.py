"""The train stage's run(): under data parallelism only rank 0 writes the model and the
DVCLive log; the other ranks train and write nothing."""

import importlib.util

import pytest
import torch

from support import ROOT
from torchreg.context import RunContext
from torchreg.data import write_dataset

spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages/train.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_writes_the_model_and_the_log(tmp_path, monkeypatch, params, rank):
    data = tmp_path / "train.npy"
    write_dataset(data, params.data, "train", 50)
    calls = []

    def fit(model, rows, cfg, generator, ctx=None, on_epoch=()):
        """Every rank trains (a rank that did not would hang its peers); no process group."""
        calls.append(ctx)
        for callback in on_epoch:
            callback(0, 0.5)
        return [0.5]

    monkeypatch.setattr(train, "fit", fit)
    ctx = RunContext(torch.device("cpu"), rank, 2)
    model, live = tmp_path / "model.safetensors", tmp_path / "dvclive"
    assert train.run(params, ctx, data, model, live) == [0.5]
    assert calls == [ctx]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    if rank == 0:
        assert "model.safetensors" in written
        assert {"dvclive/metrics.json", "dvclive/plots/metrics/train_loss.tsv"} <= set(written)
    else:
        assert written == ["train.npy"]
