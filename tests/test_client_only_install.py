"""The base package alone, as a trainer's environment installs it: `pip install armo-rm` (this checkout, versions from
requirements.lock) into a fresh venv has no torch, transformers or fastapi, and there the client, the TRL adapter,
verl's `compute_score` and the OpenRLHF reward file score against a live server started from the main venv, with
the same numbers the main venv's client gets. The `armo` command there names the extra a command needs."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from armo.client import RewardClient
from armo.model_store.store import ModelStore
from tests.live import API_KEY, armo_server
from tests.service.policy_templates import LLAMA3, QWEN25, render

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# The venvs live here between runs (one per pyproject.toml + requirements.lock); .pytest_cache is git-ignored.
CACHE = ROOT / ".pytest_cache" / "client-only-venv"
# What the base package must never bring: the server side's heavy stack, and the CLI's (the serve extra has it).
SERVER_SIDE = {"torch", "transformers", "fastapi", "uvicorn", "numpy", "safetensors", "typer", "pydantic-settings"}

PROMPT = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"}]
SOLUTIONS = ["Paris.", "It is Lyon.", "Marseille, I think, or maybe Paris."]
TRL_PROMPT = [{"role": "user", "content": "Name a colour."}]
TRL_COMPLETIONS = ["Green.", "Blue, like the sky.", "I cannot say."]

# Runs inside the client-only venv (`python -I`: the checkout's src/ is not on the path, only the installed package).
# Each framework's call shape is the one it uses: TRL's GRPOTrainer keywords, verl's reward managers, OpenRLHF's
# file loading. Prints what it saw as JSON; the test asserts on it.
SCRIPT = r"""
import importlib.metadata, importlib.util, json, os, sys

data = json.load(open(sys.argv[1]))
url, key = data["url"], data["api_key"]
out = {"installed": sorted(d.metadata["Name"].lower() + "==" + d.version for d in importlib.metadata.distributions())}

import armo.client
out["armo_file"] = armo.client.__file__
out["torch_after_client"] = "torch" in sys.modules
from armo.client import RewardClient
from armo.integrations import trl, verl
import armo.integrations.openrlhf as openrlhf_adapter

with RewardClient(url, api_key=key) as rm:
    out["client"] = rm.score([{"messages": data["prompt"], "response": s} for s in data["solutions"]])

# TRL: GRPOTrainer calls reward_func(prompts=, completions=, completion_ids=, **dataset columns, trainer_state=,
# log_metric=) with conversational prompts and completions.
logged = {}
reward = trl.ArmoReward(url, api_key=key, log_objectives=True)
n = len(data["trl_completions"])
out["trl"] = reward(
    prompts=[data["trl_prompt"]] * n,
    completions=[[{"role": "assistant", "content": c}] for c in data["trl_completions"]],
    completion_ids=[[1, 2, 3]] * n,
    solution=["x"] * n,
    trainer_state=None,
    log_metric=lambda name, value: logged.__setitem__(name, value),
)
out["trl_logged"] = logged

# verl: NaiveRewardManager per sample with reward_kwargs merged in; BatchRewardManager with the server from the env.
out["verl"] = [
    verl.compute_score(
        data_source="rm/chat", solution_str=s, ground_truth="Paris",
        extra_info={"messages": data["prompt"], "num_turns": 2}, armo_url=url, armo_api_key=key,
    )
    for s in data["solutions"]
]
os.environ["ARMO_URL"], os.environ["ARMO_API_KEY"] = url, key
out["verl_batch"] = verl.compute_score_batch(
    data_sources=["rm/chat"] * len(data["solutions"]), solution_strs=data["solutions"],
    ground_truths=[None] * len(data["solutions"]), extra_infos=[{"messages": data["prompt"]}] * len(data["solutions"]),
)

# OpenRLHF: `--remote_rm_url FILE` loads the file by path, then calls reward_func(queries, prompts, labels). Its
# tensors need torch, which OpenRLHF brings and this venv lacks; the numbers come from the same code, torch-free.
spec = importlib.util.spec_from_file_location("reward_func", openrlhf_adapter.__file__)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out["openrlhf"] = module.rewards(data["queries"], data["prompts"], [""] * len(data["queries"]))
try:
    module.reward_func(data["queries"], data["prompts"], [""] * len(data["queries"]))
    out["reward_func_missing"] = None
except ModuleNotFoundError as e:
    out["reward_func_missing"] = e.name

out["loaded"] = sorted(m for m in ("torch", "transformers", "fastapi", "numpy", "armo.service", "armo.model_store")
                       if m in sys.modules)
print(json.dumps(out))
"""


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:  # names too: a moved module changes the package as much as an edited one
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _source_copy(dest: Path) -> Path:
    """What `pip install .` builds from, copied: pip builds in the source tree (a build/ folder), which must not
    appear in the checkout; the editable install's egg-info and bytecode stay behind."""
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy2(ROOT / "README.md", dest / "README.md")
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    return dest


def _pip(python: Path, *args: str | Path) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *map(str, args)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv (no system site packages) with the base package of this checkout. Its dependencies are installed once
    per pyproject.toml + requirements.lock; the package itself again whenever its sources changed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    venv = CACHE / _digest(ROOT / "pyproject.toml", LOCK)
    python = venv / "bin" / "python"
    sources = sorted(
        p
        for p in (ROOT / "src").rglob("*")
        if p.is_file() and not any(x.endswith((".egg-info", "__pycache__")) for x in p.parts)
    )
    code = _digest(ROOT / "README.md", *sources)
    with (CACHE / ".lock").open("w") as lock:  # two test runs at once build one venv, one after the other
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".deps-ready").is_file():
            for stale in (p for p in CACHE.iterdir() if p.is_dir()):
                shutil.rmtree(stale)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            _pip(python, "-c", LOCK, _source_copy(tmp_path_factory.mktemp("armo-src")))
            (venv / ".deps-ready").touch()
        elif not (venv / ".code").is_file() or (venv / ".code").read_text() != code:
            _pip(python, "--no-deps", "--force-reinstall", _source_copy(tmp_path_factory.mktemp("armo-src")))
        (venv / ".code").write_text(code)
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing from the main venv (PYTHONPATH, VIRTUAL_ENV) may leak into the client-only one.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def test_every_requirement_of_the_base_and_the_main_extras_is_pinned() -> None:
    """scripts/setup.sh installs requirements.lock and then the project with --no-deps, so a requirement missing
    from the lock would be missing from the test venv (vllm is pinned by scripts/setup-vllm.sh, in its own venv)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"serve", "train", "ray", "vllm", "vllm-test", "dev"} <= set(extras)
    wanted = [*project["dependencies"], *(r for e in ("serve", "train", "ray", "dev") for r in extras[e])]
    pins = _lock_pins()
    names = {canonicalize_name(Requirement(r).name) for r in wanted} - {canonicalize_name(project["name"])}
    assert sorted(names - set(pins)) == []
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert base == {"httpx", "pydantic"}


@pytest.fixture
def served(tiny_store: ModelStore, tmp_path: Path) -> Iterator[str]:
    with armo_server(tiny_store, tmp_path) as server:
        yield server.url


def _references(url: str, queries: list[str], prompts: list[str]) -> dict[str, Any]:
    """The same inputs scored from the main venv: its client, and OpenRLHF's own protocol over plain HTTP."""
    with RewardClient(url, api_key=API_KEY) as rm:
        client = rm.score([{"messages": PROMPT, "response": s} for s in SOLUTIONS])
        trl = rm.score_results(
            [{"messages": TRL_PROMPT, "response": c} for c in TRL_COMPLETIONS], return_objectives=True
        )
    direct = httpx.post(
        f"{url}/get_reward",
        json={"query": queries, "prompts": prompts},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    direct.raise_for_status()
    return {"client": client, "trl": trl, "get_reward": direct.json()}


@pytest.mark.slow
def test_the_client_and_the_adapters_run_without_the_server_stack(
    client_venv: Path, served: str, tmp_path: Path
) -> None:
    prompts, queries = [], []
    for policy, generation in ((QWEN25, "Green."), (LLAMA3, "Blue, like the sky."), (QWEN25, "I cannot say.")):
        prompt = render(policy, TRL_PROMPT, add_generation_prompt=True)
        prompts.append(prompt)
        queries.append(prompt + generation)
    data = {
        "url": served,
        "api_key": API_KEY,
        "prompt": PROMPT,
        "solutions": SOLUTIONS,
        "trl_prompt": TRL_PROMPT,
        "trl_completions": TRL_COMPLETIONS,
        "queries": queries,
        "prompts": prompts,
    }
    (tmp_path / "input.json").write_text(json.dumps(data))
    (tmp_path / "check.py").write_text(SCRIPT)
    done = _run(client_venv, str(client_venv / "bin" / "python"), "-I", "check.py", "input.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)

    # Installed: the base package and what httpx and pydantic need, each at the version requirements.lock pins.
    installed = {canonicalize_name(n): v for n, v in (line.split("==", 1) for line in out["installed"])}
    assert "armo-rm" in installed and Path(out["armo_file"]).is_relative_to(client_venv)
    assert not set(installed) & SERVER_SIDE, sorted(installed)
    pins = _lock_pins()
    unpinned = {n: v for n, v in installed.items() if n not in {"armo-rm", "pip", "setuptools"} and pins.get(n) != v}
    assert not unpinned, f"not at requirements.lock's version (or not pinned there): {unpinned}"
    assert out["torch_after_client"] is False and out["loaded"] == []

    refs = _references(served, queries, prompts)
    assert all(isinstance(s, float) for s in refs["client"]) and len(set(refs["client"])) == len(SOLUTIONS)
    assert out["client"] == pytest.approx(refs["client"], abs=1e-5)
    assert out["verl"] == pytest.approx(refs["client"], abs=1e-5)
    assert out["verl_batch"] == pytest.approx(refs["client"], abs=1e-5)
    assert out["trl"] == pytest.approx([r.score for r in refs["trl"]], abs=1e-5)
    objectives = [r.objectives for r in refs["trl"]]
    assert objectives[0], "the server returned no objectives"
    for name in objectives[0]:
        mean = sum(o[name] for o in objectives) / len(objectives)
        assert out["trl_logged"][f"armo/{name}"] == pytest.approx(mean, abs=1e-5)
    rewards, logs = out["openrlhf"]
    assert rewards == pytest.approx(refs["get_reward"]["rewards"], abs=1e-5)
    assert "helpfulness" in logs and len(logs["helpfulness"]) == len(queries)
    assert out["reward_func_missing"] == "torch"  # the tensors OpenRLHF asks for: its torch, never ours


@pytest.mark.slow
def test_the_armo_command_names_the_extra_to_install(client_venv: Path, tmp_path: Path) -> None:
    armo = str(client_venv / "bin" / "armo")
    for args, extra in ((["serve", "--help"], "serve"), (["store", "ls"], "serve"), (["train", "run"], "train")):
        done = _run(client_venv, armo, *args, cwd=tmp_path)
        assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith(f"armo {args[0]} needs the {extra} extra: pip install 'armo-rm[{extra}]'"), lines
    done = _run(client_venv, armo, "--help", cwd=tmp_path)
    assert done.returncode == 1 and "the armo command needs the serve extra" in done.stderr, done.stderr
