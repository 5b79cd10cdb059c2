"""The models, and a model file (safetensors: no pickle, deterministic bytes) that rebuilds them.

`linear` is the tutorial's `x @ w + b`. `mlp` stacks Linear layers with an activation between
them; with `activation: none` the stack is still one linear map (the tutorial's lesson).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from torchreg.budget import check_memory, model_bytes
from torchreg.config import ModelConfig
from torchreg.data import CHUNK_ROWS
from torchreg.errors import ConfigError, DataError
from torchreg.files import open_input, write_bytes
from torchreg.parallel import Linear

FORMAT_VERSION = 2  # 1 was a torch.save archive
METADATA_KEY = "torchreg"
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "none": nn.Identity}


class LinearRegression(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_features))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


class MLP(nn.Module):
    def __init__(self, n_features: int, hidden: tuple[int, ...], activation: str) -> None:
        super().__init__()
        widths = (n_features, *hidden)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths, widths[1:], strict=False):
            layers += [Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers.append(Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def build_model(
    cfg: ModelConfig, n_features: int, init_std: float, generator: torch.Generator
) -> nn.Module:
    """A freshly initialised model; every draw comes from `generator`.

    The linear model starts from N(0, init_std) like the tutorial. MLP layers use PyTorch's own
    default scale, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): a tiny normal init would leave a deep
    stack with vanishing signals.
    """
    if cfg.kind == "linear":
        model: nn.Module = LinearRegression(n_features)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, init_std, generator=generator)
            if not all(p.isfinite().all() for p in model.parameters()):
                raise ConfigError(
                    f"train.init_std = {init_std:g} gives non-finite initial weights in float32 "
                    "(beyond +-3.4e38): use a smaller train.init_std"
                )
        return model
    model = MLP(n_features, cfg.hidden, cfg.activation)
    with torch.no_grad():
        for layer in model.net:
            if isinstance(layer, nn.Linear):
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return model


def save_model(path: str | Path, model: nn.Module, cfg: ModelConfig, n_features: int) -> None:
    """Write the weights as safetensors, with the config in the file's metadata.

    Not torch.save: its zip archive carries a `serialization_id` hashed from an unordered set of
    record names (pytorch/pytorch#184219) and a pickle. A safetensors file is a JSON header plus
    the raw tensors in a fixed order: the same weights give the same bytes, and loading it can
    never run code.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors keeps metadata in a hash map, so several keys could come out
    # in any order.
    header = {
        "format": FORMAT_VERSION,
        "config": cfg.model_dump(mode="json"),
        "n_features": n_features,
    }
    metadata = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


TRAIN_HINT = "run the train stage first (dvc repro train)"


def load_model(
    path: str | Path, missing_hint: str | None = TRAIN_HINT
) -> tuple[nn.Module, ModelConfig, int]:
    """Load a model file: the config is checked, then every tensor's shape against it, before
    the network is built. `missing_hint` is the advice when the file does not exist (the train
    stage's advice fits only the path that stage writes).

    The file is read through `open_input` (a regular file, never a FIFO that would block) and
    parsed from memory: a model file is small, and safetensors.safe_open would reopen the path.
    """
    path = Path(path)
    try:
        with open_input(path) as f:
            size = os.fstat(f.fileno()).st_size
            check_memory(2 * size, f"the model file {path}", "this machine cannot use it")
            data = f.read()
    except FileNotFoundError:
        advice = f": {missing_hint}" if missing_hint else ""
        raise DataError(f"{path} not found{advice}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        state = safetensors.torch.load(data)  # checks the header, offsets and sizes
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        header = json.loads(metadata[METADATA_KEY])
        if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
            raise DataError(f"{path}: not a model file written by the train stage")
        cfg = ModelConfig.model_validate(header["config"])
        n_features = header["n_features"]
        expected = _shapes(cfg, n_features)
        shapes = {name: tuple(t.shape) for name, t in state.items()}
        if shapes != expected:
            raise DataError(
                f"{path}: model file is inconsistent (tensors {_short(shapes)}, "
                f"the config needs {_short(expected)})"
            )
        check_memory(
            2 * model_bytes(cfg, n_features, CHUNK_ROWS),
            f"the model in {path} (model.hidden = {list(cfg.hidden)})",
            "this machine cannot use it",
        )
    except (ConfigError, DataError):
        raise
    except Exception as exc:  # safetensors, json and pydantic raise many types for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a valid model file ({reason[:200]})") from None
    model = build_model(cfg, n_features, 0.0, torch.Generator())
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, cfg, n_features


def _shapes(cfg: ModelConfig, n_features: object) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a model of this config has, without building it."""
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise DataError(f"n_features = {str(n_features)[:40]} is not a positive integer")
    if cfg.kind == "linear":
        return {"b": (), "w": (n_features,)}
    widths = (n_features, *cfg.hidden, 1)
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        shapes[f"net.{2 * i}.weight"] = (fan_out, fan_in)
        shapes[f"net.{2 * i}.bias"] = (fan_out,)
    return shapes


def _short(shapes: dict[str, tuple[int, ...]]) -> str:
    text = ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items()))
    return text if len(text) <= 200 else text[:200] + "..."
