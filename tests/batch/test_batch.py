"""`armo batch score`: every layout, JSONL and Parquet, error rows kept, resumption after a kill, sharding — and
the scores equal what the service answers for the same rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from typer.testing import CliRunner

from armo.batch import files
from armo.batch.runner import Options, score_file
from armo.cli import app
from armo.model_store.reward_model import RewardModel
from tests.service.conftest import AUTH, current_rm

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
ITEMS = [
    {"id": 0, "messages": CONV, "response": "Blue."},
    {"id": 1, "prompt": "Name a fruit.", "response": "An apple, crisp and sweet."},
    {"id": 2, "messages": [*CONV, {"role": "assistant", "content": "x"}], "response": "bad: ends with assistant"},
    {"id": 3, "messages": CONV, "response": ""},
]
PAIRS = [{"id": i, "messages": CONV, "chosen": f"Green {i}.", "rejected": f"I refuse to answer {i}."} for i in range(5)]
BEST_OF_N = [{"prompt": "Name a prime.", "responses": ["7", "Nine", "Eleven is prime.", "4"]}]


def _write(tmp: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    path = tmp / name
    files.write_rows(path, rows)
    return path


async def _v1_scores(client: AsyncClient, items: list[dict[str, Any]]) -> list[float | None]:
    r = await client.post("/v1/score", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    return [x["score"] for x in r.json()["results"]]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
async def test_items_equal_v1_score_and_error_rows_are_kept(
    api: tuple[FastAPI, AsyncClient], tmp_path: Path, suffix: str
) -> None:
    app_, client = api
    rm: RewardModel = current_rm(app_)
    src = _write(tmp_path, f"in{suffix}", ITEMS)
    dst = tmp_path / f"out{suffix}"
    summary = score_file(rm, src, dst, Options(explain=True), progress=False)
    out = files.read_rows(dst)
    assert [r["id"] for r in out] == [0, 1, 2, 3] and summary.errors == 1
    assert out[2]["error"] and "user turn" in out[2]["error"] and out[2]["score"] is None
    good = [{k: v for k, v in it.items() if k != "id"} for it in ITEMS if it["id"] != 2]
    want = await _v1_scores(client, good)
    assert [out[i]["score"] for i in (0, 1, 3)] == pytest.approx(want, abs=1e-5)
    assert set(out[0]["objectives"]) == set(rm.objectives) and out[0]["messages"] == CONV  # input columns kept
    assert not list(tmp_path.glob(".out*"))  # the shard folder is gone once the file is complete


async def test_pairs_and_best_of_n(api: tuple[FastAPI, AsyncClient], tmp_path: Path) -> None:
    app_, client = api
    rm = current_rm(app_)
    score_file(rm, _write(tmp_path, "p.jsonl", PAIRS), tmp_path / "p_out.jsonl", Options(), progress=False)
    out = files.read_rows(tmp_path / "p_out.jsonl")
    chosen = await _v1_scores(client, [{"messages": CONV, "response": p["chosen"]} for p in PAIRS])
    assert [r["score_chosen"] for r in out] == pytest.approx(chosen, abs=1e-5)
    for r in out:
        assert r["margin"] == pytest.approx(r["score_chosen"] - r["score_rejected"], abs=1e-9)
        assert (r["p_chosen"] > 0.5) == (r["margin"] > 0)
    score_file(
        rm, _write(tmp_path, "b.parquet", BEST_OF_N), tmp_path / "b.parquet.out.parquet", Options(), progress=False
    )
    [bon] = files.read_rows(tmp_path / "b.parquet.out.parquet")
    items = [{"prompt": "Name a prime.", "response": r} for r in BEST_OF_N[0]["responses"]]
    assert bon["scores"] == pytest.approx(await _v1_scores(client, items), abs=1e-5)
    assert bon["best"] == bon["ranking"][0] == max(range(4), key=lambda i: bon["scores"][i])


async def test_a_killed_run_resumes_to_the_same_output(api: tuple[FastAPI, AsyncClient], tmp_path: Path) -> None:
    rm = current_rm(api[0])
    rows = [{"id": i, "prompt": f"Count to {i}.", "response": " ".join(map(str, range(i)))} for i in range(1, 12)]
    src = _write(tmp_path, "in.jsonl", rows)
    options = Options(shard_rows=3)
    with pytest.raises(RuntimeError, match="stopped after 2"):
        score_file(rm, src, tmp_path / "out.jsonl", options, progress=False, max_new_shards=2)
    assert not (tmp_path / "out.jsonl").exists()
    resumed = score_file(rm, src, tmp_path / "out.jsonl", options, progress=False)
    assert resumed.shards_done_before == 2
    score_file(rm, src, tmp_path / "whole.jsonl", options, progress=False)  # uninterrupted
    a, b = files.read_rows(tmp_path / "out.jsonl"), files.read_rows(tmp_path / "whole.jsonl")
    assert [r["id"] for r in a] == list(range(1, 12))
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch" / "pairs.jsonl"


def test_the_example_file_scores_with_the_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented first run: `armo batch score examples/batch/pairs.jsonl scored.jsonl`, on the embedded default
    model, every row scored with its input columns kept."""
    for name in ("ARMO_STORE_ROOT", "ARMO_MODEL", "ARMO_ALIAS", "ARMO_BACKBONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(EXAMPLE.parents[2])  # the command as the docs give it, from the repository root
    rows = files.read_rows(EXAMPLE)
    dst = tmp_path / "scored.jsonl"
    result = CliRunner().invoke(app, ["batch", "score", "examples/batch/pairs.jsonl", str(dst)])
    assert result.exit_code == 0, result.output
    assert f"{len(rows)} rows scored" in result.output and "(0 with an error)" in result.output
    out = files.read_rows(dst)
    assert len(rows) >= 3 and [r["id"] for r in out] == [r["id"] for r in rows]
    for want, got in zip(rows, out, strict=True):
        assert {k: got[k] for k in want} == want and got["error"] is None  # input columns kept
        for key in ("score_chosen", "score_rejected", "margin", "p_chosen"):
            assert isinstance(got[key], float) and math.isfinite(got[key]), (key, got)
        assert got["margin"] == pytest.approx(got["score_chosen"] - got["score_rejected"], abs=1e-9)
        assert 0 < got["p_chosen"] < 1


def test_the_command_with_limit_and_shard(tiny_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARMO_STORE_ROOT", str(tiny_store.root))
    monkeypatch.setenv("ARMO_MODEL", "tiny")
    src = _write(tmp_path, "in.jsonl", [{"id": i, "prompt": "Hi", "response": f"Hello {i}"} for i in range(10)])
    result = CliRunner().invoke(
        app, ["batch", "score", str(src), str(tmp_path / "o.jsonl"), "--shard", "1/3", "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in files.read_rows(tmp_path / "o.jsonl")] == [1, 4]
    assert "2 rows scored" in result.output
    bad = CliRunner().invoke(app, ["batch", "score", str(src), str(tmp_path / "x.jsonl"), "--shard", "3/3"])
    assert bad.exit_code != 0 and "--shard" in bad.output
    assert json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])["error"] is None


@pytest.mark.slow
def test_ray_actor_pool_equals_the_local_run_and_resumes(tiny_store: Any, tmp_path: Path) -> None:
    """A real local Ray with 2 actors: the same output as the local run (to 1e-5), error rows kept; a run stopped
    after one shard resumes (locally or on Ray: the same shard folder) to the same file."""
    from armo.batch.on_ray import score_file_ray
    from armo.batch.runner import load_model
    from armo.ray_pool import Pool
    from armo.settings import Settings

    settings = Settings(store_root=tiny_store.root, model="tiny")
    rows = [
        *ITEMS,
        *[{"id": 10 + i, "prompt": f"Count to {i}.", "response": " ".join(map(str, range(i)))} for i in range(7)],
    ]
    src = _write(tmp_path, "in.jsonl", rows)
    options = Options(shard_rows=3)
    local = score_file(load_model(settings), src, tmp_path / "local.jsonl", options, progress=False)
    with pytest.raises(RuntimeError, match="shard"):
        score_file_ray(settings, src, tmp_path / "ray.jsonl", options, Pool(actors=2), max_new_shards=1)
    summary = score_file_ray(settings, src, tmp_path / "ray.jsonl", options, Pool(actors=2))
    assert summary.shards_done_before == 1 and summary.rows == local.rows and summary.errors == local.errors == 1
    a, b = files.read_rows(tmp_path / "local.jsonl"), files.read_rows(tmp_path / "ray.jsonl")
    assert [r["id"] for r in b] == [r["id"] for r in a]
    assert [r["score"] for r in b] == pytest.approx([r["score"] for r in a], abs=1e-5)
    assert [r["error"] for r in b] == [r["error"] for r in a]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_datasources_read_a_directory_and_write_parquet(
    tiny_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory of JSONL files in, a Parquet directory out, through Ray's datasources with 2 actors: the same rows
    and scores as the local run (to 1e-5), error rows kept, one schema even for a batch whose rows all failed, and
    a run started again replaces its output instead of adding to it."""
    import pyarrow.parquet as pq

    from armo.batch.runner import load_model
    from armo.settings import Settings

    monkeypatch.setenv("ARMO_STORE_ROOT", str(tiny_store.root))
    monkeypatch.setenv("ARMO_MODEL", "tiny")
    good = [{**p, "id": i} for i, p in enumerate([*PAIRS, *PAIRS[:1]])]
    bad = [
        {"id": 6 + i, "messages": [*CONV, {"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}
        for i in range(2)
    ]
    src = tmp_path / "in"
    _write(src, "a.jsonl", good[:4])
    _write(src, "b.jsonl", [*good[4:], *bad])  # batches of 2: the last one fails whole
    out = tmp_path / "out"
    args = ["batch", "score", str(src), str(out), "--ray", "--actors", "2", "--shard-rows", "2", "--explain"]
    for _ in range(2):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "8 rows scored" in result.output
    table = pq.read_table(out)
    assert table.num_rows == 8  # the second run replaced the first one's files
    got = sorted(table.to_pylist(), key=lambda r: r["id"])
    local_in = _write(tmp_path, "all.jsonl", [*good, *bad])
    score_file(load_model(Settings()), local_in, tmp_path / "local.jsonl", Options(explain=True), progress=False)
    want = files.read_rows(tmp_path / "local.jsonl")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [r["margin"] for r in got[:6]] == pytest.approx([r["margin"] for r in want[:6]], abs=1e-5)
    assert [r["error"] is None for r in got] == [True] * 6 + [False] * 2
    assert got[7]["score_chosen"] is None and "user turn" in got[7]["error"]
    assert got[0]["explain_chosen"]["objectives"] == pytest.approx(want[0]["explain_chosen"]["objectives"], abs=1e-5)
    as_json = CliRunner().invoke(app, [*args[:3], str(tmp_path / "out-json"), *args[4:], "--output-format", "jsonl"])
    assert as_json.exit_code == 0, as_json.output
    lines = [json.loads(x) for f in sorted((tmp_path / "out-json").glob("*.json*")) for x in f.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == list(range(8))
    no_ray = CliRunner().invoke(app, ["batch", "score", str(src), str(tmp_path / "x")])
    assert no_ray.exit_code != 0 and "--ray" in no_ray.output
