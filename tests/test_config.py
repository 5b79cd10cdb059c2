"""params.yaml: the repo's own values, every key against wrong types and out-of-range
values, the structure, YAML 1.2 as DVC reads it, files DVC refuses, and a fuzzer."""

import contextlib
import copy
import math
from pathlib import Path

import pytest
from dvc.utils.serialize import ParseError, load_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from support import ROOT
from torchreg.config import (
    MAX_PROBLEMS,
    MAX_ROWS,
    Params,
    load_params,
    noise_floor_mae,
    parse_params,
    read_params_file,
)
from torchreg.errors import ConfigError


def with_change(raw: dict, section: str, key: str, value: object) -> dict:
    raw[section][key] = value
    return raw


def test_repo_params_parse(params):
    assert params.data.true_w == (8.1, 2.0, 2.0, 4.0)
    assert params.train.lr == 0.001 and params.train.batch_size == 16
    assert params.plot.feature == 3


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        ("train", "lr", 0, "train.lr = 0 is not allowed: Input should be greater than 0"),
        ("train", "lr", -1.0, "train.lr = -1.0"),
        ("train", "lr", "fast", "train.lr = 'fast'"),
        ("train", "lr", float("nan"), "train.lr = nan"),
        ("train", "lr", float("inf"), "train.lr = inf"),
        ("train", "batch_size", 0, "train.batch_size = 0"),
        ("train", "batch_size", 2.5, "train.batch_size = 2.5"),
        ("train", "epochs", True, "train.epochs = True"),
        ("train", "loss", "l2", "'mae', 'mse' or 'huber'"),
        ("train", "optimizer", "rmsprop", "'sgd' or 'adam'"),
        ("train", "device", "tpu", "'auto', 'cpu' or 'cuda'"),
        ("train", "lr_schedule", "linear", "'constant', 'cosine' or 'step'"),
        ("train", "average", "ema", "'none' or 'swa'"),
        ("train", "average_start", 1.0, "train.average_start = 1.0"),
        ("train", "average_start", -0.1, "train.average_start = -0.1"),
        ("train", "checkpoint_every_s", -1, "train.checkpoint_every_s = -1"),
        ("train", "checkpoint_every_s", 1e9, "less than or equal to 604800"),
        ("train", "checkpoint_every_s", "often", "train.checkpoint_every_s = 'often'"),
        ("data", "n_train", 0, "data.n_train = 0"),
        ("data", "n_train", 10**12, f"less than or equal to {MAX_ROWS}"),
        ("data", "n_test", -5, "data.n_test = -5"),
        ("data", "true_w", [], "data.true_w = []"),
        ("data", "true_w", [1.0, "x"], "data.true_w[1] = 'x'"),
        ("data", "noise_std", -0.1, "data.noise_std = -0.1"),
        ("data", "target", "cubic", "'linear', 'quadratic' or 'sine'"),
        ("model", "activation", "gelu", "'relu', 'sigmoid', 'tanh' or 'none'"),
        ("model", "kind", "cnn", "'linear' or 'mlp'"),
        ("model", "hidden", [16, 0], "model.hidden[1] = 0"),
        ("plot", "feature", 4, "plot.feature = 4 is not a feature: allowed 0..3"),
        ("plot", "feature", -1, "plot.feature = -1"),
    ],
)
def test_bad_values_name_key_value_and_rule(raw_params, section, key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(with_change(raw_params, section, key, value))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_mlp_without_hidden_layers_is_refused(raw_params):
    raw_params["model"].update(kind="mlp", hidden=[])
    with pytest.raises(ConfigError, match="model.hidden is empty"):
        parse_params(raw_params)


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda r: r.update(trian=r.pop("train")), "unknown key 'trian' (allowed: data, model"),
        (lambda r: r["train"].update(learning_rate=0.1), "unknown key 'learning_rate' in train"),
        (lambda r: r.pop("plot"), "plot is missing"),
        (lambda r: r["data"].pop("seed"), "data.seed is missing"),
        (lambda r: r.update(data=[1, 2]), "data = [1, 2]"),
    ],
)
def test_structure_errors(raw_params, mutate, expected):
    mutate(raw_params)
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    assert expected in str(err.value)


def repo_params_with(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    """The repo's params.yaml, comments and all, with text replaced, in tmp_path."""
    text = (ROOT / "params.yaml").read_text()
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_exponent_notation_is_a_number(tmp_path):
    path = repo_params_with(tmp_path, ("lr: auto", "lr: 1e-3"), ("n_train: 500", "n_train: 5e2"))
    params = load_params(path)
    assert params.train.lr == 0.001 and params.data.n_train == 500
    quoted = repo_params_with(tmp_path, ("lr: auto", 'lr: "1e-3"'))
    assert load_params(quoted).train.lr == 0.001


# Scalars that YAML 1.1 (PyYAML) and YAML 1.2 (ruamel.yaml, which DVC uses) read differently,
# or that look like they might.
SCALARS = [
    *["010", "0o10", "08", "0x10", "007", "-010", "0b101", "1_000"],
    *["1:00", "190:20:30", "12:30:00.5"],
    *["yes", "no", "on", "off", "y", "n", "Yes", "ON", "True", "FALSE", "true", "tRue"],
    *["1e-3", "1E3", "1e3", "5e2", "1.0e+3", ".5", "+.5", "1.", "+1", "-0", "-0.0", "1e400"],
    *["~", "null", "Null", "NULL", "", ".inf", "-.inf", ".Inf", ".nan", ".NaN", "nan", "inf"],
    *["2024-01-01", "0.001", "linear", "1,000"],
]


def same(a: object, b: object) -> bool:
    """Equal values of the same type, all the way down; NaN equals NaN, 1 is not True."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.mark.parametrize(
    "text",
    [
        *[f"train:\n  value: {s}\n" for s in SCALARS],
        *[f"train:\n  value: '{s}'\n" for s in SCALARS],
        *[f'train:\n  value: "{s}"\n' for s in SCALARS],
        *[f"train:\n  {s}: 1\n" for s in SCALARS if s not in ("", "~")],
        *[f"train:\n  values: [{s}, 1]\n" for s in SCALARS if s],
        "%YAML 1.1\n---\ntrain:\n  seed: 010\n  flag: yes\n",  # the file may ask for 1.1
        "",
    ],
)
def test_stages_read_params_as_dvc_does(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    ours, dvcs = read_params_file(path), load_yaml(path)
    assert same(ours, dvcs), (ours, dvcs)


def test_yaml_1_2_meanings(tmp_path):
    """The oracle behind the agreement: what YAML 1.2 (and so DVC) makes of the traps."""
    corpus = {"010": 10, "0o10": 8, "1:00": "1:00", "yes": "yes", "on": "on", "1e-3": 0.001}
    path = tmp_path / "params.yaml"
    path.write_text("".join(f"k{i}: {s}\n" for i, s in enumerate(corpus)))
    assert read_params_file(path) == {f"k{i}": v for i, v in enumerate(corpus.values())}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("train:\n  lr: 0.1\n  seed: 0\n  lr: 0.2\n", "duplicate key 'lr' at line 4"),
        ("train: {lr: 0.1, lr: 0.2}\n", "duplicate key 'lr' at line 1"),
        ("data: {}\ntrain: {}\ndata: {}\n", "duplicate key 'data' at line 3"),
        ("train:\n  1: a\n  1: b\n", "duplicate key '1' at line 3"),
        ("data: [unclosed\n", "not valid YAML at line 2, column 1"),
        ("data:\n\t- 1\n", "not valid YAML at line 2, column 1"),
        ("data: 1\n  bad: indent\n", "not valid YAML at line 2"),
        ("data: *nowhere\n", "not valid YAML at line 1"),
        ("data: 1\n---\ntrain: 2\n", "not valid YAML at line 2"),
        ("data: !!python/object:os.system x\n", "not valid YAML at line 1"),
    ],
)
def test_files_dvc_refuses_are_refused_in_one_line(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParseError):
        load_yaml(path)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["data: !!float abc\n", "data: 2024-13-45\n"])
def test_scalar_its_type_cannot_hold_is_one_line(tmp_path, text):
    """ruamel raises a bare ValueError here (DVC shows a traceback); the stages say one line."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"not valid YAML: ") as err:
        load_params(path)
    assert "\n" not in str(err.value)


def test_octal_looking_seed_is_decimal(tmp_path):
    path = repo_params_with(tmp_path, ("seed: 0 ", "seed: 010 "))
    params = load_params(path)
    assert params.data.seed == 10 and params.train.seed == 10  # 8 to YAML 1.1


def test_sexagesimal_epochs_are_refused(tmp_path):
    path = repo_params_with(tmp_path, ("epochs: auto", "epochs: 1:00"))  # 60 to YAML 1.1
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: train.epochs = '1:00' is not allowed: ")
    assert "valid integer" in message and "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(tmp_path / "params.yaml")


def test_config_is_frozen(params):
    with pytest.raises(Exception, match="frozen"):
        params.train.lr = 1.0


def test_noise_floor():
    assert noise_floor_mae(1.0) == pytest.approx(math.sqrt(2 / math.pi))
    assert noise_floor_mae(0.0) == 0.0


# --- every key, every wrong type, and a fuzzer ----------------------------------

SECTIONS = {name: field.annotation for name, field in Params.model_fields.items()}
KEYS = [(s, k) for s, model in SECTIONS.items() for k in model.model_fields]
WRONG_TYPES = [None, {"nested": 1}, "not-a-number", [1, [2]], True]
NUMERIC = [
    (s, k)
    for s, k in KEYS
    if k
    in {
        "seed",
        "true_b",
        "n_train",
        "n_test",
        "noise_std",
        "lr",
        "epochs",
        "batch_size",
        "init_std",
        "feature",
    }
]


def test_every_key_is_covered(raw_params):
    assert {(s, k) for s, v in raw_params.items() for k in v} == set(KEYS)


@pytest.mark.parametrize("section,key", KEYS)
@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_every_key_rejects_wrong_types(raw_params, section, key, value):
    raw = copy.deepcopy(raw_params)
    if section == "model" and key == "hidden" and raw["model"]["kind"] == "linear":
        raw["model"]["kind"] = "mlp"  # hidden is checked either way; make it matter too
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"{section}.{key}" in message and "\n" not in message


@pytest.mark.parametrize("section,key", NUMERIC)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1, "nan", "-inf"], ids=repr)
def test_numeric_keys_reject_nan_inf_and_out_of_range(raw_params, section, key, value):
    if key == "true_b" and value == -1:
        pytest.skip("any finite bias is allowed")
    raw_params[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        parse_params(raw_params)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_unknown_key_in_every_section(raw_params, section):
    raw_params[section]["surprise"] = 1
    with pytest.raises(ConfigError, match=f"unknown key 'surprise' in {section}"):
        parse_params(raw_params)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_section_that_is_not_a_mapping(raw_params, section):
    raw_params[section] = "oops"
    with pytest.raises(ConfigError, match=f"{section} = 'oops'"):
        parse_params(raw_params)


@pytest.mark.parametrize("key", ["n_train", "n_test"])
def test_huge_sizes_are_refused_before_any_allocation(raw_params, key):
    raw_params["data"][key] = "1e12"
    with pytest.raises(ConfigError, match=f"data.{key} = 1000000000000"):
        parse_params(raw_params)


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["1e-3", "nan", ".inf", "-1", "0", "linear", "mlp", "relu", "sgd", "mae"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def mutated_params(draw):
    """Valid params with a few keys replaced, removed or added, at any level."""
    raw = read_params_file(ROOT / "params.yaml")
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*raw, "extra"]))
        action = draw(st.sampled_from(["set", "drop", "replace_section"]))
        if action == "replace_section" or section not in raw or not isinstance(raw[section], dict):
            raw[section] = draw(yaml_values)
        elif action == "drop" and raw[section]:
            raw[section].pop(draw(st.sampled_from(sorted(raw[section]))))
        else:
            key = draw(st.sampled_from([*raw[section], "extra_key"]))
            raw[section][key] = draw(yaml_values)
    return raw


def as_parsed(value: object) -> object:
    """A value as the parser reads it: a string that is a number is that number (YAML 1.1's
    `1e-3`), a list a tuple."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value.strip())
    if isinstance(value, list | tuple):
        return tuple(as_parsed(v) for v in value)
    return value


def assert_one_message(err: ConfigError) -> None:
    """One line, that starts with the file's name and lists at most MAX_PROBLEMS problems."""
    text = str(err)
    assert text.startswith("params.yaml: ") and "\n" not in text
    assert text.count("params.yaml: ") <= MAX_PROBLEMS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_params())
def test_fuzz_parser_returns_params_or_config_error(raw):
    """A document that parses means what it says: every value in it is the parsed value (no
    rounding, clamping or default in its place); any other gets one message."""
    try:
        params = parse_params(raw)
    except ConfigError as err:
        assert_one_message(err)
    else:
        assert isinstance(params, Params)
        lr = params.train.lr
        assert lr == "auto" or (lr > 0 and math.isfinite(lr))
        for section, values in raw.items():
            for key, value in values.items():
                parsed = getattr(getattr(params, section), key)
                if isinstance(value, dict):  # a nested section: data.table
                    for name, inner in value.items():
                        assert getattr(parsed, name) == as_parsed(inner), (section, key, name)
                else:
                    assert parsed == as_parsed(value), (section, key)


@settings(max_examples=200, deadline=None)
@given(yaml_values)
def test_fuzz_any_document(raw):
    """Anything YAML can hold is refused in one message (no document of random values has the
    four sections a params file needs)."""
    with pytest.raises(ConfigError) as err:
        parse_params(raw, "params.yaml")
    assert_one_message(err.value)


def test_a_message_lists_at_most_two_problems(raw_params):
    for section, key in (("train", "lr"), ("train", "epochs"), ("data", "n_train")):
        raw_params[section][key] = -1
    raw_params["model"]["kind"] = "nope"
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    problems = str(err.value).split("; ")
    assert len(problems) == 3 and problems[2] == "and 2 more problems", str(err.value)
    assert all(p.startswith("params.yaml: ") for p in problems[:2])


# --- limits and whole messages: what mutation testing found unchecked ----------------------


def test_two_problems_are_listed_without_a_count(raw_params):
    raw_params["train"]["lr"] = raw_params["train"]["epochs"] = -1
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    assert str(err.value) == (
        "params.yaml: train.lr = -1 is not allowed: Input should be greater than 0; "
        "params.yaml: train.epochs = -1 is not allowed: Input should be greater than or equal to 1"
    )


def test_a_cross_field_check_is_its_own_whole_message(raw_params):
    raw_params["plot"]["feature"] = 4
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    assert str(err.value) == (
        "params.yaml: plot.feature = 4 is not a feature: allowed 0..3 (data.true_w has 4 values)"
    )


def test_a_long_unknown_key_or_value_is_cut(raw_params):
    raw_params["train"]["k" * 200] = 1
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    key = str(err.value).removeprefix("params.yaml: unknown key ").split(" in train")[0]
    assert len(key) == 40 and key.startswith("'kkk") and key.endswith("..."), key
    del raw_params["train"]["k" * 200]
    raw_params["train"]["loss"] = "x" * 200
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    value = str(err.value).removeprefix("params.yaml: train.loss = ").split(" is not allowed")[0]
    assert len(value) == 60 and value.endswith("..."), value


@pytest.mark.parametrize("count", [2.0**63, 1e19])
def test_a_count_past_int64_stays_a_float_and_is_refused(raw_params, count):
    raw_params["data"]["seed"] = count
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    assert str(err.value) == (
        f"params.yaml: data.seed = {count!r} is not allowed: Input should be a valid integer"
    )


def test_the_size_check_counts_every_value_up_to_its_limit(raw_params):
    from torchreg.config import MAX_VALUES

    # root, the key "data", the list, and the list's values: MAX_VALUES in all, then one more
    at_limit = {"data": [0] * (MAX_VALUES - 3)}
    with pytest.raises(ConfigError) as err:
        parse_params(at_limit)
    assert "too large" not in str(err.value)
    at_limit["data"].append(0)
    with pytest.raises(ConfigError) as err:
        parse_params(at_limit)
    assert str(err.value) == (
        "params.yaml: too large or too deeply nested (over 100,000 values, counting each YAML "
        "alias again): params are a few sections of scalars and lists"
    )


def test_messages_are_one_line_whatever_they_quote():
    from torchreg.config import _one_line

    assert _one_line("a\r\nb\nc\rd") == "a\\r\\nb\\nc\\rd"


def test_a_params_file_is_read_up_to_its_limit_and_no_further(tmp_path, monkeypatch):
    import torchreg.config as config

    reads = []

    def counting_open(path):
        f = open(path, "rb")  # noqa: SIM115 (returned, closed by the caller)
        real_read = f.read
        f.read = lambda n=-1: reads.append(n) or real_read(n)
        return f

    monkeypatch.setattr(config, "open_input", counting_open)
    text = (ROOT / "params.yaml").read_text()
    pad = "#" * (config.MAX_PARAMS_BYTES - len(text.encode()) - 1) + "\n"
    path = tmp_path / "params.yaml"
    path.write_text(pad + text)  # exactly the limit: its last byte counts
    assert path.stat().st_size == config.MAX_PARAMS_BYTES
    assert config.load_params(path).compute.cpu == "portable"
    path.write_text("#" + pad + text)
    with pytest.raises(ConfigError) as err:
        config.load_params(path)
    assert str(err.value) == (
        f"{path}: over 4 MiB: a params file is a few KB of sections (data, model, train, plot)"
    )
    assert reads == [config.MAX_PARAMS_BYTES + 1] * 2


LONG = "a" * 200
ONCE = "a key may appear only once (DVC refuses the file too)"
TOO_DEEP_REST = "params are a few sections of scalars and lists"
TAGGED = "not valid YAML: a value its tag cannot hold "


@pytest.mark.parametrize(
    "text,expected",
    [
        # a ReaderError: it has no mark and no problem
        ("data: 1\n\x01\n", "not valid YAML: invalid syntax"),
        (
            "data: [unclosed\n",
            "not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'",
        ),
        (f"data: *{LONG}\n", f"not valid YAML at line 1, column 7: found undefined alias {LONG!r}"),
        (f"data: !!float {LONG}\n", f"not valid YAML: could not convert string to float: {LONG!r}"),
        ("data: {}\ntrain: {}\ndata: {}\n", f"duplicate key 'data' at line 3: {ONCE}"),
        (f"{LONG}: 1\n{LONG}: 2\n", f"duplicate key {LONG!r} at line 2: {ONCE}"),
        ("data: !!bool maybe\n", "not valid YAML: a value its tag cannot hold ('maybe')"),
        ("data: !!int ''\n", TAGGED + "(string index out of range)"),
        (f"data: !!bool {LONG}\n", TAGGED + "('" + "a" * 76 + "...)"),  # cut at 80
        ("deep: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply: " + TOO_DEEP_REST),
        (
            b"data: \xff\n",
            "cannot be read: 'utf-8' codec can't decode byte 0xff in position 6: "
            "invalid start byte",
        ),
    ],
    ids=[
        "control-char",
        "unclosed",
        "long-alias",
        "long-float",
        "dup",
        "long-dup",
        "bool-tag",
        "int-tag",
        "long-tag",
        "deep",
        "utf-8",
    ],
)
def test_unreadable_params_files_get_whole_clipped_messages(tmp_path, text, expected):
    from torchreg.errors import clip

    path = tmp_path / "params.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as err:
        load_params(path)
    # Each part quoted from the parser is cut as the code says: problems at 120 characters,
    # a duplicate key at 40.
    head, _, quoted = expected.partition(": ")
    limit = 40 if head.startswith("duplicate key") else 120
    if head.startswith("duplicate key"):
        key = head.removeprefix("duplicate key ").split(" at line")[0]
        expected = expected.replace(key, clip(key, 40))
    else:
        expected = f"{head}: {clip(quoted, limit)}" if quoted else expected
    assert str(err.value) == f"{path}: {expected}"


def test_a_duplicate_key_message_ruamel_words_otherwise_is_quoted_cut(tmp_path, monkeypatch):
    """The key is read from ruamel's wording; if that changes, its problem is quoted, cut."""
    import torchreg.config as config

    class Mark:
        line = 4

    def load(self, text):
        raise config.DuplicateKeyError(problem="p" * 100, problem_mark=Mark())

    monkeypatch.setattr(config.YAML, "load", load)
    path = tmp_path / "params.yaml"
    path.write_text("data: {}\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: duplicate key {'p' * 77}... at line 5: {ONCE}"


# --- every declared bound of every param: accepted at the bound, refused just past it --------


def declared_bounds(model: type[BaseModel] = Params, prefix: str = "") -> list[tuple]:
    """(dotted key, bound kind, bound, type) for each bound a params section declares: its
    numbers' Field(ge/gt/le/lt) and its lists' lengths (min_length/max_length)."""
    found = []
    for name, field in model.model_fields.items():
        key, kind = f"{prefix}{name}", field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found += declared_bounds(kind, f"{key}.")
            continue
        for rule in field.metadata:
            for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
                if getattr(rule, attr, None) is not None and type(rule).__name__ != "FieldInfo":
                    found.append((key, attr, getattr(rule, attr), kind))
    return found


# The bounds, written out here (not read from the schema): a bound moved in torchreg.config
# fails test_the_schema_declares_these_bounds and the value tests below. Keys ending in `[]`
# are a list's elements.
BOUNDS = {
    ("data.seed", "ge"): (0, int),
    ("data.seed", "lt"): (2**63, int),
    ("data.true_w", "min_length"): (1, list),
    ("data.true_w", "max_length"): (4096, list),
    ("data.n_train", "ge"): (1, int),
    ("data.n_train", "le"): (10**9, int),
    ("data.n_val", "ge"): (1, int),
    ("data.n_val", "le"): (10**9, int),
    ("data.n_test", "ge"): (1, int),
    ("data.n_test", "le"): (10**9, int),
    ("data.noise_std", "ge"): (0, float),
    ("data.table.path", "max_length"): (4096, str),
    ("data.table.target", "max_length"): (200, str),
    ("data.table.features", "max_length"): (4096, list),
    ("data.table.features[]", "min_length"): (1, str),
    ("data.table.features[]", "max_length"): (200, str),
    ("data.table.categorical", "max_length"): (4096, list),
    ("data.table.categorical[]", "min_length"): (1, str),
    ("data.table.categorical[]", "max_length"): (200, str),
    ("data.table.exclude", "max_length"): (4096, list),
    ("data.table.exclude[]", "min_length"): (1, str),
    ("data.table.exclude[]", "max_length"): (200, str),
    ("data.table.max_categories", "ge"): (0, int),
    ("data.table.max_categories", "le"): (4096, int),
    ("data.table.val_fraction", "ge"): (0, float),
    ("data.table.val_fraction", "lt"): (1, float),
    ("data.table.test_fraction", "ge"): (0, float),
    ("data.table.test_fraction", "lt"): (1, float),
    ("model.hidden", "max_length"): (64, list),
    ("model.hidden[]", "ge"): (1, int),
    ("model.hidden[]", "le"): (65536, int),
    ("train.seed", "ge"): (0, int),
    ("train.seed", "lt"): (2**63, int),
    ("train.lr", "gt"): (0, float),
    ("train.epochs", "ge"): (1, int),
    ("train.epochs", "le"): (10**7, int),
    ("train.batch_size", "ge"): (1, int),
    ("train.batch_size", "le"): (10**9, int),
    ("train.init_std", "ge"): (0, float),
    ("train.nproc", "ge"): (1, int),
    ("train.nproc", "le"): (1024, int),
    ("train.average_start", "ge"): (0, float),
    ("train.average_start", "lt"): (1, float),
    ("train.checkpoint_every_s", "ge"): (0, float),
    ("train.checkpoint_every_s", "le"): (7 * 86400, float),
    ("train.patience", "ge"): (0, int),
    ("train.patience", "le"): (10**7, int),
    ("plot.feature", "ge"): (0, int),
}
ITEM = {"data.true_w": 1.0, "model.hidden": 4}  # a valid element for a list's length


def inside_and_outside(kind: str, bound, typ, key: str) -> tuple:
    """The value at (or, for a strict bound, next to) the bound, and the one just past it."""
    if kind in ("min_length", "max_length"):
        item = ITEM.get(key)
        make = (lambda n: [f"x{i}" for i in range(n)]) if item is None else (lambda n: [item] * n)
        if typ is str:
            make = "x".__mul__
        step = -1 if kind == "min_length" else 1
        return make(bound), make(bound + step)
    bound = typ(bound)
    down, up = (bound - 1, bound + 1) if typ is int else (
        math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)
    )  # fmt: skip
    return {"ge": (bound, down), "gt": (up, bound), "le": (bound, up), "lt": (down, bound)}[kind]


# What another param must be for a value at the bound to be valid as a whole.
WITH = {"data.true_w": {"plot.feature": 0}}
# Bounds that a check across params always reaches first (tested with that check).
COUPLED = {(f"data.table.{f}_fraction", k) for f in ("val", "test") for k in ("ge", "lt")}


def with_value(key: str, value) -> dict:
    raw = read_params_file(ROOT / "params.yaml")
    for other, other_value in WITH.get(key, {}).items():
        raw = with_value_in(raw, other, other_value)
    return with_value_in(raw, key, value)


def with_value_in(raw: dict, key: str, value) -> dict:
    if key.endswith("[]"):
        key, value = key[:-2], [value]
    *parents, leaf = key.split(".")
    section = raw
    for part in parents:
        section = section.setdefault(part, {})
    section[leaf] = value
    return raw


def test_the_schema_declares_these_bounds():
    declared = {(key, kind): bound for key, kind, bound, _ in declared_bounds()}
    assert declared == {k: bound for k, (bound, _) in BOUNDS.items() if "[]" not in k[0]}


@pytest.mark.parametrize("key,kind", BOUNDS, ids=[f"{key}-{kind}" for key, kind in BOUNDS])
def test_a_bound_holds_at_its_value_and_refuses_the_next(key, kind):
    bound, typ = BOUNDS[key, kind]
    if (key, kind) in COUPLED:
        pytest.skip("a check of both fractions comes first: test_the_fractions_bounds")
    inside, outside = inside_and_outside(kind, bound, typ, key)
    parse_params(with_value(key, inside))
    with pytest.raises(ConfigError) as e:
        parse_params(with_value(key, outside))
    assert str(e.value).startswith(f"params.yaml: {key.removesuffix('[]')}")


@pytest.mark.parametrize("name,other", [("val", "test"), ("test", "val")])
def test_the_fractions_bounds(name, other):
    """Each over 0, and their sum under 1: at each bound and just past it."""
    key, other_key = f"data.table.{name}_fraction", f"data.table.{other}_fraction"
    smallest = math.nextafter(0, 1)
    parse_params(with_value_in(with_value(key, smallest), other_key, 0.5))
    with pytest.raises(ConfigError, match="must both be over 0"):
        parse_params(with_value(key, 0.0))
    # 0.75 - 2**-53 + 0.25 is the largest double under 1 (with 0.5 it would round to 1).
    parse_params(with_value_in(with_value(key, math.nextafter(0.75, 0)), other_key, 0.25))
    with pytest.raises(ConfigError, match="= 1 leaves no training rows"):
        parse_params(with_value_in(with_value(key, 0.75), other_key, 0.25))
