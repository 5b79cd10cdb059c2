"""The models, and a model file that rebuilds them without unpickling arbitrary objects.

`linear` is the tutorial's `x @ w + b`. `mlp` stacks Linear layers with an activation between
them; with `activation: none` the stack is still one linear map (the tutorial's lesson).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import nn

from torchreg.config import ModelConfig
from torchreg.errors import DataError
from torchreg.io import write_bytes

FORMAT_VERSION = 1
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
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], 1))
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
    """Write config + weights. Saved through a buffer: torch.save on a path stores the file name
    in the archive, so the same model would get different bytes under a temporary name."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT_VERSION,
        "config": cfg.model_dump(mode="json"),
        "n_features": n_features,
        "state_dict": state,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def load_model(path: str | Path) -> tuple[nn.Module, ModelConfig, int]:
    """Load a model file safely (weights_only: no code in the file is ever run)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the train stage first (dvc repro train)") from None
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a valid model file ({reason[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: not a model file written by the train stage")
    try:
        cfg = ModelConfig.model_validate(payload["config"])
        n_features = int(payload["n_features"])
        model = build_model(cfg, n_features, 0.0, torch.Generator())
        model.load_state_dict(payload["state_dict"], strict=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0]
        raise DataError(f"{path}: model file is inconsistent ({reason[:200]})") from None
    model.eval()
    return model, cfg, n_features
