"""Feature extraction: shared-prompt forward equals one pass per response; the length cap; cache resumption; the
missing shards on Ray actors, with and without a stage-0 delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from armo.cli import app
from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.delta import DELTA_FILE, RUN_DELTA_ENTRY, read_run_delta
from armo.model_store.encoding import Truncation, encode, encode_group
from armo.model_store.forward import run_padded
from armo.model_store.manifest import BackboneDelta, sha256_file
from armo.training.config import ExtractConfig, TrainConfig, load_config
from armo.training.extract import Item, _batches, forward_groups, job_key, run_extraction, truncation
from armo.training.featurize import featurize
from armo.training.on_ray import ShardExtractor
from armo.training.prepare import build_eval_set

CONVS = [
    [{"role": "user", "content": "Hi there, how are you?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Why?"},
    ],
    [{"role": "user", "content": "Name a colour."}],
]
RESPONSES = [["Fine, thanks.", "I am well, and you? " * 3], ["Arithmetic.", "Because 2 and 2 make 4."], ["Blue."]]


@pytest.mark.parametrize("backbone_name", ["tiny_backbone", "tiny_padded_backbone"])
def test_shared_prompt_equals_single_pass(request: pytest.FixtureRequest, backbone_name: str) -> None:
    backbone: Backbone = request.getfixturevalue(backbone_name)
    cfg = ExtractConfig(max_length=512)
    groups = [encode_group(backbone.tokenizer, m, r, truncation(cfg)) for m, r in zip(CONVS, RESPONSES, strict=True)]
    feats = forward_groups(backbone, groups)
    flat = [
        encode(backbone.tokenizer, m, x, Truncation(512)) for m, rs in zip(CONVS, RESPONSES, strict=True) for x in rs
    ]
    ref = run_padded(backbone, flat)
    for f in ("prompt", "response", "response_mean"):
        assert torch.allclose(getattr(feats, f), getattr(ref, f), atol=1e-4)


def test_batches_count_real_tokens_when_packed_and_padded_ones_otherwise(tiny_backbone: Backbone) -> None:
    cfg = ExtractConfig(max_length=512)
    groups = [
        encode_group(tiny_backbone.tokenizer, m, r, truncation(cfg)) for m, r in zip(CONVS, RESPONSES, strict=True)
    ]
    real = [len(g.prompt_ids) + sum(map(len, g.suffixes)) for g in groups]
    assert [sorted(b) for b in _batches(groups, sum(real), packed=True)] == [[0, 1, 2]]  # all fit in real tokens
    padded = _batches(groups, sum(real), packed=False)  # padding to the longest prompt and response costs more
    assert len(padded) > 1 and sorted(i for b in padded for i in b) == [0, 1, 2]


def test_length_cap_keeps_boundary_and_end_of_turn(tiny_backbone: Backbone) -> None:
    tok = tiny_backbone.tokenizer
    messages = [{"role": "user", "content": "word " * 200}]
    responses = ["short answer", "long answer " * 100]
    cfg = ExtractConfig(max_length=96, min_prompt_tokens=32)
    g = encode_group(tiny_backbone.tokenizer, messages, responses, truncation(cfg))
    full = [encode(tok, messages, r, Truncation(1 << 20)) for r in responses]
    assert all(len(g.prompt_ids) + len(s) <= 96 for s in g.suffixes)
    assert len(g.prompt_ids) == 32 and g.truncated == (True, True)
    assert g.prompt_ids[0] == full[0].input_ids[0]  # BOS (or first template token) kept
    assert g.prompt_ids[g.prompt_index] == full[0].input_ids[full[0].prompt_index]  # the boundary token survives
    assert g.suffixes[1][-1] == full[1].input_ids[-1]  # the end-of-turn token the feature is read from
    assert g.response_tokens[1] == full[1].response_tokens  # verbosity sees the untruncated length


def test_no_truncation_under_the_cap(tiny_backbone: Backbone) -> None:
    g = encode_group(tiny_backbone.tokenizer, CONVS[0], RESPONSES[0], Truncation(512))
    full = encode(tiny_backbone.tokenizer, CONVS[0], RESPONSES[0][1], Truncation(512))
    assert g.truncated == (False, False)
    assert g.prompt_ids + g.suffixes[1] == full.input_ids
    assert g.prompt_index == full.prompt_index


def _items() -> list[Item]:
    return [Item(tuple(m), r) for m, rs in zip(CONVS, RESPONSES, strict=True) for r in rs] + [
        Item(({"role": "user", "content": f"Count to {i}."},), " ".join(str(j) for j in range(i))) for i in range(1, 8)
    ]


def test_resumes_after_interruption(tiny_backbone: Backbone, tmp_path: Path) -> None:
    items = _items()
    cfg = ExtractConfig(max_length=128, shard_size=3)
    with pytest.raises(RuntimeError, match="stopped after 2 new shard"):
        run_extraction(tiny_backbone, items, name="t", cache_root=tmp_path, cfg=cfg, max_new_shards=2, progress=False)
    (job,) = tmp_path.iterdir()
    first = sorted(job.glob("shard-*.safetensors"))
    assert len(first) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    (job / ".shard-00002.safetensors.partial").write_bytes(b"junk from a kill")  # a torn temp file is ignored
    table = run_extraction(tiny_backbone, items, name="t", cache_root=tmp_path, cfg=cfg, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # finished shards were not recomputed
    (run,) = json.loads((job / "job.json").read_text())["runs"]  # the interrupted run never finished
    assert run["new_shards"] == len(list(job.glob("shard-*.safetensors"))) - 2 and run["tokens"] > 0
    fresh = run_extraction(tiny_backbone, items, name="fresh", cache_root=tmp_path / "other", cfg=cfg, progress=False)
    assert len(table) == len(items)
    assert torch.allclose(table.response, fresh.response, atol=1e-5)
    assert torch.allclose(table.prompt, fresh.prompt, atol=1e-5)
    # items come back in input order: compare with a direct single-pass extraction
    enc = [encode(tiny_backbone.tokenizer, it.messages, it.response, Truncation(128)) for it in items]
    ref = run_padded(tiny_backbone, enc)
    assert torch.allclose(table.response, ref.response, atol=1e-4)
    assert torch.allclose(table.pooled("mean"), ref.response_mean, atol=1e-4)
    assert torch.allclose(table.features(torch.arange(2, 5)).response_mean, ref.response_mean[2:5], atol=1e-4)


def test_cache_key_changes_with_cap(tiny_backbone: Backbone, tmp_path: Path) -> None:
    items = _items()[:3]
    run_extraction(
        tiny_backbone, items, name="t", cache_root=tmp_path, cfg=ExtractConfig(max_length=128), progress=False
    )
    run_extraction(
        tiny_backbone, items, name="t", cache_root=tmp_path, cfg=ExtractConfig(max_length=64), progress=False
    )
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
def test_ray_actors_fill_the_same_cache(tiny_backbone: Backbone, tiny_backbone_dir: Path, tmp_path: Path) -> None:
    """`armo train extract --ray`: 2 real local Ray actors compute the missing shards of a half-done local job;
    the table equals a fully local extraction."""
    from armo.ray_pool import Pool
    from armo.training.on_ray import ray_pool

    items = _items()
    cfg = ExtractConfig(max_length=128, shard_size=3)
    with pytest.raises(RuntimeError, match="stopped after 1 new shard"):
        run_extraction(tiny_backbone, items, name="t", cache_root=tmp_path, cfg=cfg, max_new_shards=1, progress=False)
    pool = ray_pool(tiny_backbone, str(tiny_backbone_dir), Pool(actors=2))
    table = run_extraction(tiny_backbone, items, name="t", cache_root=tmp_path, cfg=cfg, progress=False, pool=pool)
    (job,) = tmp_path.iterdir()
    runs = json.loads((job / "job.json").read_text())["runs"]
    assert runs[-1]["new_shards"] == len(list(job.glob("shard-*.safetensors"))) - 1  # the rest came from Ray
    local = run_extraction(tiny_backbone, items, name="t", cache_root=tmp_path / "local", cfg=cfg, progress=False)
    for column in ("response", "response_mean", "prompt"):
        assert torch.allclose(getattr(table, column), getattr(local, column), atol=1e-5), column
    assert torch.equal(table.length, local.length) and torch.equal(table.truncated, local.truncated)


def _delta(directory: Path, backbone_dir: Path) -> Path:
    """A stage-0 run's delta by hand: layer 1's MLP output weights replaced ("full"), with its delta.json."""
    directory.mkdir(parents=True)
    name = "layers.1.mlp.down_proj.weight"
    weight = load_file(str(backbone_dir / "model.safetensors"))[name]
    save_file(
        {name: weight + 0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))},
        str(directory / DELTA_FILE),
    )
    revision = load_backbone(str(backbone_dir)).revision
    ref = BackboneDelta(sha256=sha256_file(directory / DELTA_FILE), base_revision=revision, method="full", layers=(1,))
    (directory / RUN_DELTA_ENTRY).write_text(ref.model_dump_json())
    return directory / DELTA_FILE


def test_ray_actors_refuse_a_backbone_the_cache_is_not_keyed_by(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    delta = _delta(tmp_path / "stage0", tiny_backbone_dir)
    tuned = load_backbone(str(tiny_backbone_dir), delta=read_run_delta(delta))
    cfg = ExtractConfig(max_length=128)
    key = job_key(tuned, [], cfg, {})
    ShardExtractor(str(tiny_backbone_dir), vars(cfg), 1, "cpu", str(delta), "float32", key)  # the driver's own
    with pytest.raises(RuntimeError, match="not the backbone the feature cache is keyed by"):
        ShardExtractor(str(tiny_backbone_dir), vars(cfg), 1, "cpu", "", "float32", key)  # the base: frozen features


@pytest.mark.slow
def test_ray_extraction_with_a_stage0_delta_equals_the_local_one(
    tiny_config: TrainConfig, tiny_backbone_dir: Path, tmp_path: Path
) -> None:
    """`armo train extract --eval --ray` with `stage0.delta`: the actors run the tuned backbone, so the shards filed
    under the tuned backbone's key hold its features, not the frozen backbone's."""
    raw = tiny_config.to_dict()
    raw["stage0"]["delta"] = str(_delta(tmp_path / "stage0", tiny_backbone_dir))
    tables = {}
    for where in ("ray", "local"):
        raw["cache_dir"] = str(tmp_path / where)
        (tmp_path / f"{where}.json").write_text(json.dumps(raw))
        args = ["train", "extract", "--config", str(tmp_path / f"{where}.json"), "--eval", "--full"]
        res = CliRunner().invoke(app, [*args, "--ray", "--actors", "1"] if where == "ray" else args)
        assert res.exit_code == 0, res.output
        cfg = load_config(None, raw)
        tuned = load_backbone(cfg.backbone, delta=read_run_delta(Path(cfg.stage0.delta)))
        tables[where] = featurize(cfg, build_eval_set(cfg.eval, False), "rewardbench-full", tuned)[0]  # cached
    ds = build_eval_set(tiny_config.eval, False)
    frozen = run_extraction(
        load_backbone(str(tiny_backbone_dir)),
        ds.items,
        name="frozen",
        cache_root=tmp_path / "frozen",
        cfg=tiny_config.extract,
        progress=False,
    )
    for column in ("response", "response_mean", "prompt"):
        ray, local = getattr(tables["ray"], column), getattr(tables["local"], column)
        torch.testing.assert_close(ray, local, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ray, getattr(frozen, column), atol=1e-3)  # the delta matters
