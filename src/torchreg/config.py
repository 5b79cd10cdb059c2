"""params.yaml, parsed once into typed, frozen, validated sections.

Every stage calls `load_params()`; a mistake anywhere in the file stops the first stage that
runs with one line naming the key, the value given and what is allowed. This module must not
import torch: the plot stage uses it and should start fast.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
    WrapValidator,
    model_validator,
)
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError

from torchreg.errors import ConfigError, clip, shown
from torchreg.files import open_input

PARAMS_FILE = "params.yaml"
# Hard ceilings that keep a typo like `n_train: 1e12` from reaching an allocation.
MAX_ROWS = 10**9
MAX_FEATURES = 4096
MAX_WIDTH = 65536
MAX_NAME_CHARS = 200  # a column name
# A valid file holds a few thousand values at most (true_w: up to MAX_FEATURES). Anything much
# larger is refused before validation: YAML aliases let a few lines stand for a billion values
# (shared references), and walking them, in pydantic or in a message, would take hours.
MAX_VALUES = 100_000
# Problems listed in one message; the rest are counted.
MAX_PROBLEMS = 2
# A valid file is a few KB; reading more than this whole would only feed the parser.
MAX_PARAMS_BYTES = 4 << 20
TOO_DEEP = "nested too deeply: params are a few sections of scalars and lists"


def _yaml_number(value: Any) -> Any:
    """A quoted `"1e-3"`, or one from a YAML 1.1 tool such as PyYAML, is meant as the number."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _yaml_integer(value: Any) -> Any:
    """Accept `1e6` or `1000.0` for a count, but not `0.5` or `true`."""
    value = _yaml_number(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


# Strict: `true` is not 1 and `"abc"` is not a number; the before-validators above are the
# only conversions allowed.
Float = Annotated[float, Strict(), Field(allow_inf_nan=False), BeforeValidator(_yaml_number)]
Int = Annotated[int, Strict(), BeforeValidator(_yaml_integer)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_NAME_CHARS)]


def _delimiter(value: str) -> str:
    """One printable ASCII character that is not a letter, digit, quote or space, or a tab:
    what Arrow's CSV parser can split cells on. `\\t` and `tab` are a tab too: `dvc exp run -S`
    cannot pass a tab character itself."""
    if value in ("\\t", "tab"):
        return "\t"
    if value == "\t" or (
        len(value) == 1
        and value.isascii()
        and value.isprintable()
        and not value.isalnum()
        and value not in '" '
    ):
        return value
    raise ValueError(
        f"data.table.delimiter = {shown(value, 20)} is not allowed: one character, a tab "
        "('\\t' or tab) or a printable ASCII one that is not a letter, digit, quote or space "
        "(e.g. ',' or ';')"
    )


class TableConfig(_Section):
    """data.source: table. A table's rows go to a split by a hash of the row and data.seed."""

    path: Annotated[str, Strict(), Field(max_length=4096)] = "examples/tables/cars.csv"
    target: Annotated[str, Strict(), Field(max_length=MAX_NAME_CHARS)] = "Miles_per_Gallon"
    # Empty: every numeric column but the target, in the table's order.
    features: tuple[Name, ...] = Field(default=(), max_length=MAX_FEATURES)
    # Text columns one-hot encoded (named here, or chosen by max_categories when features is
    # empty); their categories come from the training split.
    categorical: tuple[Name, ...] = Field(default=(), max_length=MAX_FEATURES)
    # With features empty: columns not to take (an identifier, a column measured with the
    # target).
    exclude: tuple[Name, ...] = Field(default=(), max_length=MAX_FEATURES)
    max_categories: Int = Field(default=20, ge=0, le=MAX_FEATURES)
    missing: Literal["refuse", "drop"] = "refuse"
    standardize: Annotated[bool, Strict()] = True
    delimiter: Annotated[str, Strict(), AfterValidator(_delimiter)] = ","
    val_fraction: Float = Field(default=0.15, ge=0, lt=1)
    test_fraction: Float = Field(default=0.15, ge=0, lt=1)

    @model_validator(mode="after")
    def _fractions_leave_a_training_split(self) -> TableConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"data.table.val_fraction + data.table.test_fraction = "
                f"{self.val_fraction + self.test_fraction:g} leaves no training rows: "
                "their sum must be under 1"
            )
        if self.val_fraction == 0 or self.test_fraction == 0:
            raise ValueError(
                "data.table.val_fraction and data.table.test_fraction must both be over 0: "
                "every source has a validation and a test split"
            )
        if len(set(self.features)) != len(self.features):
            twice = sorted({f for f in self.features if self.features.count(f) > 1})
            raise ValueError(f"data.table.features names {shown(twice[0], 40)} twice")
        if len(set(self.categorical)) != len(self.categorical):
            twice = sorted({f for f in self.categorical if self.categorical.count(f) > 1})
            raise ValueError(f"data.table.categorical names {shown(twice[0], 40)} twice")
        if self.target in self.categorical:
            raise ValueError(
                f"data.table.categorical holds the target {shown(self.target, 40)}: the target "
                "is a number to predict"
            )
        if self.features and not set(self.categorical) <= set(self.features):
            left = [c for c in self.categorical if c not in self.features][0]
            raise ValueError(
                f"data.table.categorical names {shown(left, 40)}, which data.table.features "
                "does not list: list it there too, or leave data.table.features empty"
            )
        if self.features and self.exclude:
            raise ValueError(
                "data.table.exclude applies when data.table.features is empty (every column "
                "but the target and the excluded ones): set one or the other"
            )
        if self.target in self.features:
            raise ValueError(
                f"data.table.features holds the target {shown(self.target, 40)}: a feature "
                "cannot be what is predicted"
            )
        return self


class DataConfig(_Section):
    # synthetic: the tutorial's y = f(x) + noise; table: a CSV or Parquet file (data.table).
    source: Literal["synthetic", "table"] = "synthetic"
    seed: Int = Field(ge=0, lt=2**63)
    true_w: tuple[Float, ...] = Field(min_length=1, max_length=MAX_FEATURES)
    true_b: Float
    n_train: Int = Field(ge=1, le=MAX_ROWS)
    n_val: Int = Field(default=1000, ge=1, le=MAX_ROWS)
    n_test: Int = Field(ge=1, le=MAX_ROWS)
    noise_std: Float = Field(ge=0)
    target: Literal["linear", "quadratic", "sine"]
    table: TableConfig = TableConfig()

    @model_validator(mode="after")
    def _table_is_named(self) -> DataConfig:
        if self.source == "table" and not (self.table.path and self.table.target):
            raise ValueError(
                "data.source is table: data.table.path (the CSV or Parquet file) and "
                "data.table.target (the column to predict) must be set"
            )
        return self

    @property
    def n_features(self) -> int:
        """The synthetic source's features (a table's are known once it is read)."""
        return len(self.true_w)


class ModelConfig(_Section):
    kind: Literal["linear", "mlp"]
    hidden: tuple[Annotated[Int, Field(ge=1, le=MAX_WIDTH)], ...] = Field(max_length=64)
    activation: Literal["relu", "sigmoid", "tanh", "none"]

    @model_validator(mode="after")
    def _mlp_has_layers(self) -> ModelConfig:
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("model.hidden is empty: an mlp needs at least one hidden width")
        return self


def _auto(value: Any, handler: Any) -> Any:
    """`auto`, kept as it is (TrainConfig.resolved chooses the value), or the field's type."""
    return AUTO if value == AUTO else handler(value)


AUTO = "auto"
# A number, or `auto`: the tutorial's value on synthetic data, a table's on a table.
# (Serialized as they are: a number or the text `auto`.)
AutoFloat = Annotated[Float, WrapValidator(_auto), PlainSerializer(lambda v: v, return_type=Any)]
AutoInt = Annotated[Int, WrapValidator(_auto), PlainSerializer(lambda v: v, return_type=Any)]
# On a table, `auto` trains for about TABLE_STEPS steps (at most TUTORIAL_EPOCHS epochs) with
# lr TABLE_LR on a cosine schedule: within 1.01x of the exact least-absolute-deviations fit on
# every table of bench/tables, where the tutorial's constant 0.001 stops short on some.
TUTORIAL_LR, TUTORIAL_EPOCHS, TUTORIAL_SCHEDULE = 0.001, 1000, "constant"
TABLE_LR, TABLE_STEPS, TABLE_SCHEDULE = 0.01, 100_000, "cosine"


class TrainConfig(_Section):
    seed: Int = Field(ge=0, lt=2**63)
    lr: AutoFloat = Field(gt=0)
    epochs: AutoInt = Field(ge=1, le=10**7)
    batch_size: Int = Field(ge=1, le=MAX_ROWS)
    loss: Literal["mae", "mse", "huber"]
    optimizer: Literal["sgd", "adam"]
    init_std: Float = Field(ge=0)
    device: Literal["auto", "cpu", "cuda"]
    nproc: Int = Field(ge=1, le=1024)
    # Defaults: today's behaviour (constant lr, last iterate), for params files without them.
    lr_schedule: Literal["auto", "constant", "cosine", "step"] = "constant"
    average: Literal["none", "swa"] = "none"
    average_start: Float = Field(default=0.5, ge=0, lt=1)
    # Seconds of training between checkpoints (0: after every epoch); at most a week.
    checkpoint_every_s: Float = Field(default=60.0, ge=0, le=7 * 86400)
    # Early stopping: epochs without a better validation loss before training stops and the
    # best epoch's weights are kept; 0: off (every epoch runs, the last weights are kept).
    patience: Int = Field(default=0, ge=0, le=10**7)

    def resolved(self, source: str, rows: int) -> TrainConfig:
        """This config with every `auto` chosen, for `source` (synthetic: the tutorial's
        values; table: TABLE_*) and `rows` training rows (the table's epochs: enough for
        TABLE_STEPS steps of batch_size rows, at most TUTORIAL_EPOCHS)."""
        table = source == "table"
        steps_per_epoch = -(-rows // self.batch_size)
        chosen = {
            "lr": TABLE_LR if table else TUTORIAL_LR,
            "epochs": min(TUTORIAL_EPOCHS, -(-TABLE_STEPS // steps_per_epoch))
            if table
            else TUTORIAL_EPOCHS,
            "lr_schedule": TABLE_SCHEDULE if table else TUTORIAL_SCHEDULE,
        }
        return self.model_copy(update={k: v for k, v in chosen.items() if getattr(self, k) == AUTO})

    @property
    def is_resolved(self) -> bool:
        return AUTO not in (self.lr, self.epochs, self.lr_schedule)

    @model_validator(mode="after")
    def _patience_keeps_one_weight_set(self) -> TrainConfig:
        if self.patience and self.average == "swa":
            raise ValueError(
                "train.patience keeps the best epoch's weights, train.average: swa their mean: "
                "set one of them (train.patience: 0 or train.average: none)"
            )
        return self


class PlotConfig(_Section):
    feature: Int = Field(ge=0)


class ComputeConfig(_Section):
    # portable: the same bytes on every x86-64 CPU of a family; native: this CPU's fastest
    # kernels, bytes may differ between machines (torchreg.cpu).
    cpu: Literal["portable", "native"] = "portable"


class Params(_Section):
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    plot: PlotConfig
    compute: ComputeConfig

    @model_validator(mode="after")
    def _feature_exists(self) -> Params:
        n = self.data.n_features
        if self.data.source == "synthetic" and self.plot.feature >= n:
            raise ValueError(
                f"plot.feature = {self.plot.feature} is not a feature: "
                f"allowed 0..{n - 1} (data.true_w has {n} values)"
            )
        return self

    def resolved(self, source: str, rows: int) -> Params:
        """These params with train's `auto` values chosen for `source` ("synthetic" or
        "table") and `rows` training rows (TrainConfig.resolved)."""
        return self.model_copy(update={"train": self.train.resolved(source, rows)})


SECTIONS = tuple(Params.model_fields)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        # The schema's own names and list indexes: a key of the user's shows only in the
        # unknown-key message, cut there.
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: dict, source: str) -> str:
    loc = error["loc"]
    key = _where(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent, name = loc[:-1], loc[-1]
        model = Params
        for part in parent:
            model = model.model_fields[part].annotation
        allowed = ", ".join(model.model_fields)
        where = f" in {_where(parent)}" if parent else ""
        return f"{source}: unknown key {shown(name, 40)}{where} (allowed: {allowed})"
    if kind == "missing":
        return f"{source}: {key} is missing"
    if kind == "value_error":  # our cross-field checks carry their own full message
        return f"{source}: {error['msg'].removeprefix('Value error, ')}"
    value = shown(error.get("input"), 60)
    return f"{source}: {key} = {value} is not allowed: {clip(error['msg'], 120)}"


def _one_line(message: str) -> str:
    """One line, whatever odd characters a key or value holds."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded mapping; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections (data, model, train, plot, compute)"
        )
    _check_size(raw, source)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        message = "; ".join(_describe(e, source) for e in errors[:MAX_PROBLEMS])
        if len(errors) > MAX_PROBLEMS:
            message += f"; and {len(errors) - MAX_PROBLEMS} more problems"
        raise ConfigError(_one_line(message)) from None


def _check_size(raw: Any, source: str) -> None:
    """Refuse a structure of over MAX_VALUES values, each shared reference counted again."""
    if too_many_values(raw, MAX_VALUES):
        raise ConfigError(
            f"{source}: too large or too deeply nested (over {MAX_VALUES:,} values, "
            "counting each YAML alias again): params are a few sections of scalars and lists"
        )


def too_many_values(raw: Any, limit: int) -> bool:
    """Whether a loaded YAML document holds over `limit` values, each shared reference counted
    again. Stops counting at the limit, so a billion-laughs file or a self-referencing alias
    (`&a [*a]`) costs at most `limit` steps."""
    count, todo = 0, [raw]
    while todo:
        node = todo.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, list | tuple):
            todo.extend(node)
    return False


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The file's mapping exactly as DVC reads it (dvc/utils/serialize/_yaml.py).

    YAML 1.2 through ruamel.yaml's safe loader, as DVC configures it, so the stages see the
    values that dvc.lock and `dvc exp show` record: `010` is 10, `1e-3` a float, `yes` and
    `1:00` are strings, and a duplicate key refuses the file (DVC refuses it too).
    """
    path = Path(path)
    try:
        with open_input(path) as f:  # a FIFO or a directory is refused, never waited on
            data = f.read(MAX_PARAMS_BYTES + 1)
        if len(data) > MAX_PARAMS_BYTES:
            raise ConfigError(
                f"{path}: over {MAX_PARAMS_BYTES >> 20} MiB: a params file is a few KB of "
                "sections (data, model, train, plot)"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {clip(str(exc), 120)}") from None
    try:
        raw = YAML(typ="safe").load(text) or {}  # `or {}`: DVC reads an empty file as {}
    except DuplicateKeyError as exc:
        # ruamel names the key only inside its message: `found duplicate key "lr" with value ...`
        found = re.match(r'found duplicate key "(.*?)" with value', exc.problem or "")
        key = shown(found[1], 40) if found else clip(exc.problem or "", 80)
        line = exc.problem_mark.line + 1
        message = f"{path}: duplicate key {key} at line {line}: a key may appear only once"
        raise ConfigError(_one_line(f"{message} (DVC refuses the file too)")) from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = clip(getattr(exc, "problem", None) or "invalid syntax", 120)
        raise ConfigError(_one_line(f"{path}: not valid YAML{where}: {problem}")) from None
    except ValueError as exc:  # a scalar its tag cannot hold: `!!float abc`, `2024-13-45`
        raise ConfigError(_one_line(f"{path}: not valid YAML: {clip(str(exc), 120)}")) from None
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # `!!bool maybe`, `!!int ''`
        raise ConfigError(
            _one_line(f"{path}: not valid YAML: a value its tag cannot hold ({clip(str(exc), 80)})")
        ) from None
    except RecursionError:  # the parser recurses once a level: 5000 nested maps overflow it
        raise ConfigError(f"{path}: {TOO_DEEP}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (data, model, train, plot, compute)"
        )
    return raw


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml read as DVC reads it, then validated."""
    return parse_params(read_params_file(path), str(Path(path)))


def noise_floor_mae(noise_std: float) -> float:
    """E|e| for e ~ N(0, s^2): the best MAE any model can reach on fresh data."""
    return noise_std * math.sqrt(2 / math.pi)
