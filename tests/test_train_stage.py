"""The train stage: under data parallelism only rank 0 writes the model and the DVCLive log
(the other ranks train and write nothing); train.device without a GPU."""

import importlib.util
import json
import os

import pytest
import torch

from support import ROOT
from torchreg.config import parse_params
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

    def fit(model, rows, cfg, generator, ctx=None, on_epoch=(), *rest, **more):
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


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_device_auto_is_the_cpu_without_cuda_and_cuda_with_it(monkeypatch):
    from torchreg.context import resolve_device

    no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    deterministic = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", deterministic.append)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert resolve_device("auto") == torch.device("cuda")
    assert deterministic == [True] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_cuda_asked_for_without_a_gpu_is_one_clear_line(tmp_path, monkeypatch, raw_params, capsys):
    no_cuda(monkeypatch)
    monkeypatch.chdir(tmp_path)
    raw_params["train"]["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(json.dumps(raw_params))  # JSON is YAML
    write_dataset(tmp_path / "train.npy", parse_params(raw_params).data, "train", 50)
    with pytest.raises(SystemExit) as exc:
        train.main(["--data", "train.npy"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "train: error: train.device = 'cuda' but no CUDA device is available here "
        "(allowed: auto, cpu)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "train.npy"]
