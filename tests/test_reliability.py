"""params.yaml under attack: every key, every wrong type, and a fuzzer."""

import contextlib
import copy
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchreg.config import Params, parse_params, read_params_file
from torchreg.errors import ConfigError

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
    from conftest import ROOT  # noqa: PLC0415

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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_params())
def test_fuzz_parser_returns_params_or_config_error(raw):
    try:
        params = parse_params(raw)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert isinstance(params, Params)
        assert params.train.lr > 0 and math.isfinite(params.train.lr)


@settings(max_examples=200, deadline=None)
@given(yaml_values)
def test_fuzz_any_document(raw):
    with contextlib.suppress(ConfigError):
        parse_params(raw)
