"""Budgets: what a config will need is estimated and refused before anything big is allocated."""

import pytest

from torchreg import budget
from torchreg.errors import ConfigError
from torchreg.model import build_model, load_model, save_model
from torchreg.training import seeded


def test_parameter_count_matches_the_built_model(params):
    for hidden in [(16,), (16, 8), (3, 5, 7)]:
        cfg = params.model.model_copy(update={"kind": "mlp", "hidden": hidden})
        model = build_model(cfg, 4, 0.01, seeded(0, "init"))
        assert budget.parameter_count(cfg, 4) == sum(p.numel() for p in model.parameters())
    assert budget.parameter_count(params.model, 4) == 5


def test_a_huge_network_is_estimated_without_building_it(params):
    cfg = params.model.model_copy(update={"kind": "mlp", "hidden": (65536, 65536)})
    sgd = budget.train_bytes(cfg, params.train, 4, 1 << 20)
    adam = budget.train_bytes(cfg, params.train.model_copy(update={"optimizer": "adam"}), 4, 0)
    assert sgd > 2 * 65536**2 * 4  # weights and gradients: over 34 GB
    assert adam > sgd


def test_refusal_names_the_estimate_and_what_to_change(monkeypatch):
    monkeypatch.setattr(budget, "available_bytes", lambda: 1 << 30)
    with pytest.raises(ConfigError, match=r"needs about 2\.0 GiB of memory but 1\.0 GiB.*lower"):
        budget.check_memory(2 << 30, "training this model", "lower model.hidden")
    budget.check_memory(1 << 29, "training this model", "lower model.hidden")  # fits


def test_available_memory_is_positive_and_bounded():
    assert 0 < budget.available_bytes() < 1 << 50


def test_more_processes_than_cores_is_refused():
    cpus = budget.usable_cpus()
    budget.check_processes(cpus, "cpu")
    with pytest.raises(ConfigError, match=rf"train.nproc = {cpus + 22} .* allowed 1..{cpus}"):
        budget.check_processes(cpus + 22, "cpu")


def test_a_model_file_too_big_for_this_machine_is_refused_before_building(
    params, tmp_path, monkeypatch
):
    cfg = params.model.model_copy(update={"kind": "mlp", "hidden": (64,)})
    save_model(tmp_path / "m.safetensors", build_model(cfg, 4, 0, seeded(0, "init")), cfg, 4)
    monkeypatch.setattr(budget, "available_bytes", lambda: 1024)
    built = []
    monkeypatch.setattr("torchreg.model.build_model", lambda *a: built.append(a))
    with pytest.raises(ConfigError, match="the model (file|in) .*m.safetensors"):
        load_model(tmp_path / "m.safetensors")
    assert not built


def test_a_batch_larger_than_the_training_set_is_counted_as_the_set(tmp_path, params):
    """train.batch_size: 1e9 on 200 rows trains in batches of 200: the check counts those (it
    refused such a run once, as needing 551.7 GiB)."""
    from torchreg.data import DataFile, write_dataset
    from torchreg.training import check_budget

    write_dataset(tmp_path / "train.npy", params.data, "train", 200)
    huge = params.model_copy(
        update={"train": params.train.model_copy(update={"batch_size": 10**9})}
    )
    check_budget(huge, DataFile(tmp_path / "train.npy"))  # nothing raised
