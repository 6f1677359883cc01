"""`armo train run` and `armo eval` through the real CLI on the tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from armo.cli import app
from armo.training.bradley_terry import SUMMARY_KEYS
from armo.training.config import TrainConfig


def test_train_run_then_eval(tiny_config: TrainConfig, tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(tiny_config.to_dict()))
    runner = CliRunner()
    res = runner.invoke(
        app, ["train", "run", "--config", str(cfg_path), "--set", "gating.max_epochs=2", "--name", "cli", "--publish"]
    )
    assert res.exit_code == 0, res.output
    assert f"published: {tiny_config.name}/{tiny_config.version} in {tiny_config.store}" in res.output
    saved = json.loads((Path(tiny_config.out_dir) / "cli" / "result.json").read_text())
    assert saved["command"].startswith("armo ") and saved["config"]["gating"]["max_epochs"] == 2
    assert not tiny_config.publish and saved["config"]["publish"]  # the flag, recorded with the run
    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            tiny_config.name,
            "--store",
            tiny_config.store,
            "--config",
            str(cfg_path),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    scores = json.loads((out / "rewardbench.json").read_text())
    assert scores["four_section_mean"] == saved["metrics"]["rewardbench"]["four_section_mean"]
    assert (out / "gating_by_subset.png").is_file()
    report = tmp_path / "report.md"
    res = runner.invoke(app, ["train", "report", str(Path(tiny_config.out_dir) / "cli"), "--out", str(report)])
    assert res.exit_code == 0, res.output
    assert "four-section mean" in report.read_text()


def test_train_cv_writes_paired_differences(tiny_config: TrainConfig, tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(tiny_config.to_dict()))
    out = tmp_path / "not-yet" / "cv.json"  # --out makes its folder
    args = ["train", "cv", "--config", str(cfg_path), "--set", "gating.max_epochs=2", "--folds", "2"]
    res = CliRunner().invoke(app, [*args, "--try", "pooling=mean", "--out", str(out), "--by", "category"])
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    assert list(results) == ["", "pooling=mean"] and results[""]["vs_base"] == 0.0
    assert "vs (config), paired" in res.output and "out-of-fold" in res.output
    by = json.loads(out.with_suffix(".by.json").read_text())  # synthetic rows carry no category: the groups
    assert set(by) == set(results[""]) - set(SUMMARY_KEYS)
    assert all(
        row["pooling=mean vs"] == pytest.approx(results["pooling=mean"][g] - results[""][g]) for g, row in by.items()
    )
    assert "by label" in res.output and "#1: pooling=mean" in res.output


def test_ray_gpus_need_a_gpu_device(tiny_config: TrainConfig, tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(tiny_config.to_dict()))
    res = CliRunner().invoke(app, ["train", "extract", "--config", str(cfg_path), "--ray", "--gpus-per-actor", "1"])
    assert res.exit_code == 2 and "device=cuda" in res.output, res.output
