"""Training configs: where runs publish, help text on every field, the gating architecture defined once."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from armo.model_store.heads import GatingConfig
from armo.training import config as config_module
from armo.training.config import ExtractConfig, GatingTrainConfig, TrainConfig, load_config
from armo.training.gating import gating_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.json"))


def test_training_publishes_only_when_asked_and_never_into_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARMO_STORE_ROOT", raising=False)
    cfg = TrainConfig()
    assert (cfg.store, cfg.publish) == ("runs/store", False)
    monkeypatch.setenv("ARMO_STORE_ROOT", "/srv/armo-store")
    assert load_config(None).store == "/srv/armo-store"
    assert load_config(None, {"store": "elsewhere", "publish": True}).store == "elsewhere"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_do_not_name_a_store(path: Path) -> None:
    assert "store" not in json.loads(path.read_text())
    cfg = load_config(path)
    assert not cfg.publish and "bundled" not in cfg.store


def _dataclasses(cls: type) -> list[type]:
    """`cls` and every dataclass reachable through its fields' defaults."""
    out = [cls]
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            out += _dataclasses(type(default))
    return out


def test_every_config_field_carries_help() -> None:
    # GatingConfig's fields that GatingTrainConfig inherits unchanged are declared (and documented) in heads.py.
    inherited = {f.name for f in dataclasses.fields(GatingConfig)} - set(GatingTrainConfig.__annotations__)
    for cls in {*_dataclasses(TrainConfig), config_module.SampleExtension}:
        declared_here = [f for f in dataclasses.fields(cls) if not (cls is GatingTrainConfig and f.name in inherited)]
        assert declared_here
        for f in declared_here:
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_extract_config_defaults() -> None:
    assert dataclasses.asdict(ExtractConfig()) == {
        "max_length": 512,
        "min_prompt_tokens": 64,
        "max_pass_tokens": 4096,
        "shard_size": 256,
        "threads": 0,
    }


@pytest.mark.parametrize("path", [None, *CONFIGS], ids=lambda p: "defaults" if p is None else p.name)
def test_gating_config_is_the_architecture_part_of_the_training_config(path: Path | None) -> None:
    g = load_config(path, {"gating.input": "response"} if path is None else None).gating
    # what gating_config built field by field before GatingTrainConfig inherited GatingConfig
    expected = GatingConfig(
        hidden_dim=g.hidden_dim,
        n_hidden=g.n_hidden,
        temperature=g.temperature,
        logit_scale_init=g.logit_scale_init,
        dropout=g.dropout,
        input=g.input,
    )
    built = gating_config(g)
    assert type(built) is GatingConfig and built == expected
    assert (g.hidden_dim, g.n_hidden, g.dropout) == (256, 2, 0.1)  # training defaults, not the model's
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.lr = 0.1  # type: ignore[misc]


def test_gating_train_config_keeps_its_json_shape() -> None:
    """Configs and the configs recorded in manifests stay flat: architecture and training keys side by side."""
    raw = {"hidden_dim": 8, "temperature": 3.0, "lr": 0.01, "balance_groups": True, "input": "response"}
    g = load_config(None, {f"gating.{k}": v for k, v in raw.items()}).to_dict()["gating"]
    assert {k: g[k] for k in raw} == raw
    assert set(g) == {f.name for f in dataclasses.fields(GatingTrainConfig)} >= set(GatingConfig().to_dict())


def test_probe_names_follow_the_source_aspect_scheme() -> None:
    from armo.training.objective_set import probe_name

    default = json.loads((Path(__file__).resolve().parents[2] / "configs" / "default.json").read_text())
    for probes in (TrainConfig().probes.objectives, default["probes"]["objectives"]):
        assert all(probe_name(groups) == name for name, groups in probes.items())
    assert probe_name(["ultrafeedback/overall"]) == "ultrafeedback-preference"
    assert probe_name(["rmb/helpfulness", "hh-rlhf/helpfulness"]) == "hhrmb-helpfulness"
    # a probe fit on a subset of another's pairs is dropped by leaving it out
    kept = {"hhrmb-helpfulness": ["hh-rlhf/helpfulness", "rmb/helpfulness"]}
    assert load_config(None, {"probes.objectives": kept}).probes.objectives == kept


def test_rule_objectives_and_their_signs_are_a_config_switch() -> None:
    from armo.training.objective_set import rule_objectives

    cfg = TrainConfig()
    got = [(o.name, o.rule, o.sign) for o in rule_objectives(cfg)]
    assert got[:3] == [
        ("rule-verbosity", "verbosity", 1),
        ("rule-refusal", "refusal", 1),
        ("rule-compliance", "refusal", -1),
    ]
    assert [n for n, _, _ in got[3:]] == ["rule-repetition", "rule-markdown", "rule-code-parses"]
    one_way = load_config(None, {"objectives.negated_rules": {}})
    assert all(o.sign == 1 for o in rule_objectives(one_way)) and len(rule_objectives(one_way)) == 5
    with pytest.raises(ValueError, match="'compliance' is legacy"):
        load_config(None, {"objectives.rules": ["verbosity", "compliance"]})
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        load_config(None, {"objectives.negated_rules": {"nope": "yes"}})
    with pytest.raises(ValueError, match="collide"):
        load_config(None, {"objectives.negated_rules": {"refusal": "markdown"}})


def test_the_device_is_checked_as_the_services_is() -> None:
    from armo.settings import Settings

    assert load_config(None, {"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ValueError, match=r"device must be cpu, cuda, cuda:N or mps, got 'gpu'"):
        load_config(None, {"device": "gpu"})
    with pytest.raises(ValueError, match=r"device must be cpu, cuda, cuda:N or mps, got 'gpu'"):
        Settings(device="gpu")
