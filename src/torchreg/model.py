"""The models, and a model file (safetensors: no pickle, deterministic bytes) that rebuilds them.

`linear` is the tutorial's `x @ w + b`. `mlp` stacks Linear layers with an activation between
them; with `activation: none` the stack is still one linear map (the tutorial's lesson).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import safetensors.torch
import torch
from torch import nn

from torchreg.budget import check_memory, model_bytes
from torchreg.config import ModelConfig
from torchreg.data import CHUNK_ROWS
from torchreg.errors import ConfigError, DataError, first_line, rebuild_advice
from torchreg.files import open_input, read_json, write_bytes
from torchreg.parallel import Linear

FORMAT_VERSION = 3  # 1 was a torch.save archive; 2 had no content digest
METADATA_KEY = "torchreg"
DIGEST_KEY = "sha256"  # in the metadata header: see write_sealed
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "none": nn.Identity}


class LinearRegression(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_features))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


def _plain_relu(module: nn.Module) -> bool:
    """Whether `module` is an nn.ReLU no hook watches (its own, or every module's)."""
    hooks = (
        module._forward_hooks,
        module._forward_pre_hooks,
        nn.modules.module._global_forward_hooks,
        nn.modules.module._global_forward_pre_hooks,
    )
    return type(module) is nn.ReLU and not any(hooks)


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
        # A layer and the plain nn.ReLU after it are one call (the same bits as self.net(x)):
        # in the portable mode a wide layer then ReLUs each block of rows while it is in the
        # cache. Any other activation, or a ReLU with hooks, is called as a module.
        *hidden, last = self.net
        for layer, activation in zip(hidden[::2], hidden[1::2], strict=True):
            x = layer(x, relu=True) if _plain_relu(activation) else activation(layer(x))
        return last(x).squeeze(-1)


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


def save_model(
    path: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    n_features: int,
    features: dict | None = None,
) -> None:
    """Write the weights as a sealed safetensors file, with the config in its metadata, and
    `features` (a table's column names and standardisation, see `read_features`) if given.

    Not torch.save: its zip archive carries a `serialization_id` hashed from an unordered set of
    record names (pytorch/pytorch#184219) and a pickle. A safetensors file is a JSON header plus
    the raw tensors in a fixed order: the same weights give the same bytes, and loading it can
    never run code.
    """
    header = {
        "format": FORMAT_VERSION,
        "config": cfg.model_dump(mode="json"),
        "n_features": n_features,
    }
    if features is not None:  # not for synthetic data: its model files keep their bytes
        header["features"] = features
    write_sealed(path, model.state_dict(), header)


def read_features(path: Path, n_features: int) -> dict | None:
    """What a model trained on a table keeps of prepare's features.json: the feature names in
    order, the target's name and the standardisation (None, or each feature's mean and std).
    None for the synthetic source, whose features are x0, x1, ... as they always were."""
    record = read_json(path, "prepare")  # bounded, one line for a missing or broken file
    if not isinstance(record, dict) or record.get("source") != "table":
        return None
    features = {
        "names": record.get("features"),
        "target": record.get("target"),
        "standardize": record.get("standardize"),
    }
    if record.get("categories"):  # a table with text columns: the columns, their categories
        features |= {"columns": record.get("columns"), "categories": record.get("categories")}
    if record.get("booleans"):  # columns of true/false cells
        features["booleans"] = record.get("booleans")
    problem = check_features(features, n_features)
    if problem:
        raise DataError(f"{path}: {problem}: rerun the prepare stage (dvc repro prepare)")
    return features


def check_features(features: object, n_features: int) -> str | None:
    """What is wrong with a features record for `n_features` inputs, or None."""
    if not isinstance(features, dict):
        return "its features are not a mapping"
    names = features.get("names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return "its feature names are not a list of names"
    if len(names) != n_features:
        return f"it names {len(names)} features, the data has {n_features}"
    if not isinstance(features.get("target"), str):
        return "its target is not a name"
    if "categories" in features and (problem := _layout_problem(features, names)):
        return problem
    booleans = features.get("booleans", [])
    if not (isinstance(booleans, list) and all(isinstance(b, str) for b in booleans)):
        return "its boolean columns are not a list of names"
    scale = features.get("standardize")
    if scale is None:
        return None
    for key in ("mean", "std"):
        values = scale.get(key) if isinstance(scale, dict) else None
        if not (
            isinstance(values, list)
            and len(values) == n_features
            and all(isinstance(v, float | int) and math.isfinite(v) for v in values)
        ):
            return f"its standardisation's {key} is not {n_features} finite numbers"
    if not all(v > 0 for v in scale["std"]):
        return "its standardisation has a std that is not over 0"
    # The target's (a model file of an older version has none: its target was not scaled).
    target = [scale.get(key) for key in ("target_mean", "target_std")]
    if target != [None, None] and not (
        all(isinstance(v, float | int) and math.isfinite(v) for v in target) and target[1] > 0
    ):
        return "its target's standardisation is not a finite mean and a std over 0"
    return None


def input_layout(features: dict) -> list[tuple[str, str | None]]:
    """For each of a table model's inputs: (the table's column, the category it is 1 for, or
    None for a number). A categorical column has one input per category, in its order."""
    categories = features.get("categories") or {}
    layout: list[tuple[str, str | None]] = []
    for column in features.get("columns") or features["names"]:
        if column in categories:
            layout += [(column, text) for text in categories[column]]
        else:
            layout.append((column, None))
    return layout


def _layout_problem(features: dict, names: list[str]) -> str | None:
    columns, categories = features.get("columns"), features.get("categories")
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        return "its columns are not a list of names"
    if not (
        isinstance(categories, dict)
        and all(
            c in columns and isinstance(v, list) and v and all(isinstance(t, str) for t in v)
            for c, v in categories.items()
        )
    ):
        return "its categories are not lists of texts of its columns"
    layout = input_layout(features)
    if [c if t is None else f"{c}={t}" for c, t in layout] != names:
        return "its feature names do not match its columns and categories"
    return None


@dataclass(frozen=True)
class Units:
    """A table's way back from the standardised values the model sees to its own units: a
    stored value v is `mean + std * v` (features: per column; the target: one pair)."""

    x_mean: tuple[float, ...]
    x_std: tuple[float, ...]
    y_mean: float
    y_std: float

    @classmethod
    def of(cls, record: dict | None) -> Units | None:
        """From prepare's features.json (or a model file's features); None where the target
        was not standardised (synthetic data, data.table.standardize: false)."""
        scale = (record or {}).get("standardize") or {}
        if scale.get("target_std") is None:
            return None
        return cls(
            tuple(scale["mean"]), tuple(scale["std"]), scale["target_mean"], scale["target_std"]
        )

    def x(self, j: int, values: torch.Tensor) -> torch.Tensor:
        return values.double() * self.x_std[j] + self.x_mean[j]

    def y(self, values: torch.Tensor) -> torch.Tensor:
        return values.double() * self.y_std + self.y_mean


def write_sealed(path: str | Path, tensors: Mapping[str, torch.Tensor], header: dict) -> None:
    """Write `tensors` as safetensors whose metadata holds `header` and a sha256 of the whole
    file but that digest: every tensor's name, dtype, shape and bytes, and `header`.
    `read_sealed` gives them back only if they are unchanged and every float is finite.
    Same tensors and header, same bytes. A NaN or infinite value is refused here: a model
    file never holds one."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise DataError(f"cannot write {path}: {name} holds a NaN or infinite value")
    # The digest covers the tensor table and bytes as safetensors lays them out; the metadata
    # does not move them (the offsets count from the end of the JSON header), and `_digest`
    # leaves it out, so a file saved without it gives the same table and payload.
    table, payload = _split(safetensors.torch.save(tensors))
    sealed = {**header, DIGEST_KEY: _digest(table, header, payload)}
    write_bytes(path, safetensors.torch.save(tensors, metadata=_metadata(sealed)))


def _metadata(header: dict) -> dict[str, str]:
    # One metadata key: safetensors keeps metadata in a hash map, so several keys could come
    # out in any order.
    return {METADATA_KEY: json.dumps(header, sort_keys=True)}


def _check_size(f: BinaryIO, size: int, path: Path, what: str) -> None:
    """Refuse a file whose length is not the one its header describes, reading only the
    header: a huge file is never read whole to find out it is not what it claims."""
    try:
        length = _header_length(f.read(8), size)
        table = json.loads(f.read(length))
        ends = [v["data_offsets"][1] for k, v in table.items() if k != "__metadata__"]
        described = 8 + length + max(ends, default=0)
    except RecursionError:
        raise DataError(f"{path}: not a valid {what} (its header is nested too deeply)") from None
    except Exception as exc:  # json, and a table of the wrong shape, raise many types
        raise DataError(f"{path}: not a valid {what} ({first_line(exc)})") from None
    if described != size:
        raise DataError(
            f"{path}: not a valid {what} (its header describes {described:,} bytes, the file "
            f"has {size:,})"
        )
    f.seek(0)


def _split(data: bytes) -> tuple[dict, memoryview]:
    """A safetensors file's JSON header (less the size check the caller does) and its tensors'
    bytes."""
    size = _header_length(data[:8], len(data))
    return json.loads(data[8 : 8 + size]), memoryview(data)[8 + size :]


def _header_length(first: bytes, size: int) -> int:
    """The JSON header's length that a safetensors file of `size` bytes gives in its `first` 8
    bytes, or ValueError if no such header fits in the file (a file under 8 bytes included)."""
    length = int.from_bytes(first, "little")
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise ValueError(f"a header of {length:,} bytes in a file of {size:,}")
    return length


def _digest(table: dict, header: dict, payload: memoryview) -> str:
    """sha256 of the tensor table (names, dtypes, shapes, offsets), `header` and the bytes."""
    table = {k: v for k, v in table.items() if k != "__metadata__"}
    described = json.dumps([table, header], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(described.encode())
    digest.update(payload)
    return digest.hexdigest()


# A model file's JSON header is a few KB (up to 130 tensors and the config); a larger one is
# not a model file, and is refused before it is parsed.
MAX_HEADER_BYTES = 1 << 20


def read_sealed(
    path: str | Path, what: str = "model file", missing_hint: str | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and header of a file `write_sealed` wrote, proven unchanged (its digest)
    and finite, or one DataError naming `path`, `what` it should be and the cause.
    `missing_hint` is the advice when the file does not exist.

    The file is read through `open_input` (a regular file, never a FIFO that would block) and
    parsed from memory: its JSON header first (at most MAX_HEADER_BYTES), then the rest only if
    the file is exactly as long as that header says and the machine can hold it twice."""
    path = Path(path)
    try:
        with open_input(path) as f:
            size = os.fstat(f.fileno()).st_size
            _check_size(f, size, path, what)
            check_memory(2 * size, f"the {what} {path}", "this machine cannot use it")
            data = f.read()
    except FileNotFoundError:
        advice = f": {missing_hint}" if missing_hint else ""
        raise DataError(f"{path} not found{advice}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    rebuild = f": {advice}" if (advice := rebuild_advice(missing_hint)) else ""
    try:
        table, payload = _split(data)
        metadata = (table.get("__metadata__") or {}).get(METADATA_KEY)
        if metadata is None:
            raise DataError(
                f"{path}: not a {what} written by this pipeline (no {METADATA_KEY!r} metadata)"
            )
        header = json.loads(metadata)
        if not isinstance(header, dict) or not isinstance(header.get(DIGEST_KEY), str):
            raise DataError(
                f"{path}: not a {what} written by this version (no content digest){rebuild}"
            )
        carried = header.pop(DIGEST_KEY)
        if _digest(table, header, payload) != carried:
            raise DataError(
                f"{path}: damaged (its content does not match the sha256 it carries){rebuild}"
            )
        state = safetensors.torch.load(data)  # checks the offsets and sizes too
    except DataError:
        raise
    except RecursionError:
        raise DataError(f"{path}: not a valid {what} (its header is nested too deeply)") from None
    except Exception as exc:  # safetensors, json and the checks above raise many types
        raise DataError(f"{path}: not a valid {what} ({first_line(exc)})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise DataError(f"{path}: {name} holds a NaN or infinite value{rebuild}")
    return state, header


TRAIN_HINT = "run the train stage first (dvc repro train)"


def load_model(
    path: str | Path, missing_hint: str | None = TRAIN_HINT
) -> tuple[nn.Module, ModelConfig, int]:
    """Load a model file: its digest and finite weights are checked (`read_sealed`), then the
    config, then every tensor's shape against it, before the network is built.
    `missing_hint` is the advice when the file does not exist (the train stage's advice fits
    only the path that stage writes)."""
    path = Path(path)
    state, header = read_sealed(path, "model file", missing_hint)
    try:
        if header.get("format") != FORMAT_VERSION:
            raise DataError(f"{path}: not a model file written by the train stage")
        cfg = ModelConfig.model_validate(header["config"])
        n_features = header["n_features"]
        expected = _shapes(cfg, n_features)
        features = header.get("features")
        if features is not None and (problem := check_features(features, n_features)):
            raise DataError(f"{path}: model file is inconsistent ({problem})")
        shapes = {name: tuple(t.shape) for name, t in state.items()}
        dtypes = {str(t.dtype).removeprefix("torch.") for t in state.values()}
        if shapes != expected or dtypes != {"float32"}:
            raise DataError(
                f"{path}: model file is inconsistent (tensors {_short(shapes)}"
                f"{' of ' + ', '.join(sorted(dtypes)) if dtypes else ''}, the config needs "
                f"{_short(expected)} of float32)"
            )
        check_memory(
            2 * model_bytes(cfg, n_features, CHUNK_ROWS),
            f"the model in {path} (model.hidden = {list(cfg.hidden)})",
            "this machine cannot use it",
        )
    except (ConfigError, DataError):
        raise
    except Exception as exc:  # pydantic and a header of the wrong types raise many types
        raise DataError(f"{path}: not a valid model file ({first_line(exc)})") from None
    model = build_model(cfg, n_features, 0.0, torch.Generator())
    model.load_state_dict(state, strict=True)
    model.eval()
    model.features = features  # a table's names and standardisation, or None
    return model, cfg, n_features


def _shapes(cfg: ModelConfig, n_features: object) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a model of this config has, without building it."""
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise ValueError(f"n_features = {str(n_features)[:40]} is not a positive integer")
    if cfg.kind == "linear":
        return {"b": (), "w": (n_features,)}
    widths = (n_features, *cfg.hidden, 1)
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        shapes[f"net.{2 * i}.weight"] = (fan_out, fan_in)
        shapes[f"net.{2 * i}.bias"] = (fan_out,)
    return shapes


def _short(shapes: dict[str, tuple[int, ...]]) -> str:
    text = ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items())) or "none"
    return text if len(text) <= 200 else text[:200] + "..."
