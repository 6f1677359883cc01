"""Every example in README.md and docs/*.md runs, or says why it cannot.

Each fenced block of a user doc is one of:
- a `text` block (a diagram, a file layout): not an example, never run;
- a block marked `<!-- not-run: reason -->` on the line above its fence (a GPU, Kubernetes, an 8B checkpoint, a
  long training job, a framework not installed here): not run, and the reason is required;
- a `bash` block: run by bash against a real `armo serve` on the bundled default model. Its commands may be `curl`
  to http://127.0.0.1:8000 (answered by that server through a stand-in `curl`, which records every request), `armo
  store list|show|verify`, `armo … --help`, and `grep`, `head`, `jq` in a pipe. Every request must answer 200 (or
  the status of an `<!-- expect: STATUS -->` marker) with the documented response schema, every item scored;
- a `python` block: run against the same server, must exit 0;
- a `json` block marked `<!-- response: ROUTE -->`: a documented answer; its keys must all be in the real answer
  to the block's file's last request to ROUTE;
- a `json` block marked `<!-- data: pairwise -->` or `<!-- data: ratings -->`: a documented training-data row; the
  training loaders must read it and keep it.
Anything else fails the test, naming the file, the line and the marker to add.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from armo import protocol
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.store import ModelStore
from tests.live import ADMIN_KEY, ROOT, Server, armo_server

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LOCAL = re.compile(r"^https?://(?:127\.0\.0\.1|localhost):8000")
MARKER = re.compile(r"<!--\s*(not-run|expect|response|data)\s*:\s*(.*?)\s*-->")
FENCE = re.compile(r"^\s*```\s*([\w-]*)\s*$")
BASH = shutil.which("bash") or "/bin/bash"
SHELL = {"bash", "sh", "shell", "console"}
FILTERS = {"grep", "head", "jq"}
STORE_READS = {"list", "show", "verify"}
SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/score": protocol.ScoreResponse,
    "/v1/explain": protocol.ExplainResponse,
    "/v1/compare": protocol.CompareResponse,
    "/v1/untemplate": protocol.UntemplateResponse,
    "/v1/models": protocol.ModelsResponse,
    "/v1/models/reload": protocol.ReloadStatus,
    "/get_reward": protocol.GetRewardResponse,
    "/health": protocol.HealthResponse,
    "/ready": protocol.ReadyResponse,
}
FAKE_CURL = '''#!{python}
"""curl, as the doc examples use it (-s -S -X -H -d), sent to the test server and recorded."""
import json, os, re, sys
import httpx
args, method, headers, data, url, i = sys.argv[1:], None, {{}}, None, None, 0
while i < len(args):
    a = args[i]
    if a in ("-X", "--request"):
        method, i = args[i + 1], i + 2
    elif a in ("-H", "--header"):
        key, _, value = args[i + 1].partition(":")
        headers[key.strip()], i = value.strip(), i + 2
    elif a in ("-d", "--data", "--data-raw", "--data-binary"):
        data, i = args[i + 1], i + 2
    elif a.startswith("-"):
        i += 1
    else:
        url, i = a, i + 1
record = {{"args": args}}
if url is None or not re.match({local!r}, url):
    record.update(status=None, path=url, body="not the local service at http://127.0.0.1:8000")
else:
    path = re.sub({local!r}, "", url)
    r = httpx.request(method or ("POST" if data is not None else "GET"), os.environ["DOCTEST_URL"] + path,
                      headers=headers, content=data, timeout=120)
    record.update(status=r.status_code, path=path.split("?")[0], body=r.text)
    sys.stdout.write(r.text + "\\n")
with open(os.environ["DOCTEST_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\\n")
'''


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, each with the markers on the lines right above its fence."""
    lines, out, i = path.read_text(encoding="utf-8").splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        marks, k = {}, i - 1
        while k >= 0 and (mark := MARKER.fullmatch(lines[k].strip())):
            marks[mark.group(1)] = mark.group(2)
            k -= 1
        indent = len(lines[i]) - len(lines[i].lstrip())
        text = "\n".join(line[indent:] for line in lines[i + 1 : end])
        out.append(Block(str(path.relative_to(ROOT)), i + 1, m.group(1).lower(), text, marks))
        i = end + 1
    return out


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (split at newlines, `|`, `;`, `&&`, `||` outside quotes; comments and
    line continuations removed), each as its words."""
    out, word, words, quote, i = [], "", [], "", 0

    def end_word() -> None:
        nonlocal word
        if word:
            words.append(word)
        word = ""

    def end_command() -> None:
        nonlocal words
        end_word()
        if words:
            out.append(words)
        words = []

    while i < len(script):
        c = script[i]
        if quote:
            word += c
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote, word = c, word + c
        elif c == "\\" and script[i + 1 : i + 2] == "\n":
            i += 1
        elif c == "#" and not word:
            while i < len(script) and script[i] != "\n":
                i += 1
            continue
        elif c in "\n;|&":
            end_command()
        elif c in " \t":
            end_word()
        else:
            word += c
        i += 1
    end_command()
    return [[(shlex.split(w) or [""])[0] for w in cmd] for cmd in out]


def unrunnable(cmd: list[str]) -> str | None:
    """Why the doc test cannot run this command (None: it can)."""
    name = cmd[0].removeprefix(".venv/bin/")
    if name == "curl":
        urls = [w for w in cmd[1:] if w.startswith("http")]
        return None if urls and all(LOCAL.match(u) for u in urls) else "curl to somewhere else than the local service"
    if name in FILTERS:
        return None
    if name == "armo" and (cmd[-1] == "--help" or (cmd[1:2] == ["store"] and cmd[2:3] and cmd[2] in STORE_READS)):
        return None if "--root" not in cmd else "a store other than the bundled one"
    return f"`{' '.join(cmd)}`"


def check_shape(record: dict[str, Any], expect: int) -> str | None:
    """What is wrong with one recorded request's answer (None: nothing)."""
    if record["status"] != expect:
        return f"{record['path']} answered {record['status']} (expected {expect}): {record['body'][:300]}"
    if expect != 200:
        return None
    schema = SCHEMAS.get(record["path"])
    if record["path"] == "/metrics":
        return None if "armo_" in record["body"] else "/metrics has no armo_ metric"
    if schema is None:
        return f"{record['path']}: no schema known to the doc test (add it to SCHEMAS)"
    body = json.loads(record["body"])
    schema.model_validate(body)
    failed = [r.get("error") for r in body.get("results", []) if r.get("error")] + [
        e for e in body.get("errors") or [] if e
    ]
    return f"{record['path']}: items failed: {failed}" if failed else None


def missing_keys(documented: Any, actual: Any, at: str = "") -> list[str]:
    """Keys of the documented answer that the real one lacks (dicts by key, lists by their first element)."""
    if isinstance(documented, dict) and isinstance(actual, dict):
        return [
            m
            for k, v in documented.items()
            for m in ([f"{at}.{k}"] if k not in actual else missing_keys(v, actual[k], f"{at}.{k}"))
        ]
    if isinstance(documented, list) and isinstance(actual, list) and documented and actual:
        return missing_keys(documented[0], actual[0], f"{at}[0]")
    return []


def check_data_row(kind: str, text: str, tmp: Path) -> str | None:
    """What keeps a documented training row from loading as `kind` (None: it loads and is kept)."""
    from armo.training.data import load_pairs, load_ratings
    from armo.training.prepare import valid

    path = tmp / "row.jsonl"
    path.write_text(json.dumps(json.loads(text)) + "\n", encoding="utf-8")
    if kind == "pairwise":
        pairs = load_pairs(path)
        return None if valid(pairs[0].messages, pairs[0].chosen, pairs[0].rejected) else "the pair is skipped"
    if kind == "ratings":
        rows = load_ratings(path)
        ok = valid(rows[0].messages, rows[0].response) and rows[0].ratings
        return None if ok else "the rating row is skipped"
    return f"unknown data kind {kind!r} (pairwise or ratings)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service a user starts with `bash scripts/serve.sh`: the bundled default, no API keys; an admin key for the
    reload examples (they send `$ARMO_ADMIN_KEY`)."""
    workdir = tmp_path_factory.mktemp("docs")
    with armo_server(ModelStore(BUNDLED_ROOT), workdir, ARMO_MODEL=DEFAULT_MODEL, ARMO_API_KEYS="") as s:
        yield s


@pytest.fixture(scope="module")
def shims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The only commands an unmarked shell block finds on its PATH."""
    d = tmp_path_factory.mktemp("bin")
    curl = d / "curl"
    curl.write_text(FAKE_CURL.format(python=sys.executable, local=LOCAL.pattern), encoding="utf-8")
    curl.chmod(0o755)
    (d / "armo").symlink_to(Path(sys.executable).parent / "armo")
    for tool in ("grep", "head", "jq", "cat"):
        if real := shutil.which(tool):
            (d / tool).symlink_to(real)
    return d


def run_doc(doc: Path, server: Server, shims: Path, tmp: Path) -> list[str]:
    problems: list[str] = []
    last: dict[str, Any] = {}
    log = tmp / "requests.jsonl"
    env = {
        "PATH": str(shims),
        "HOME": os.environ.get("HOME", str(tmp)),
        "DOCTEST_URL": server.url,
        "DOCTEST_LOG": str(log),
        "ARMO_ADMIN_KEY": ADMIN_KEY,
        "PYTHONPATH": str(ROOT / "src"),
    }
    for b in blocks(doc):
        if "not-run" in b.marks:
            if not b.marks["not-run"]:
                problems.append(f"{b.where}: `<!-- not-run: -->` needs a reason")
            continue
        if b.lang == "text":
            continue
        if b.lang in SHELL:
            why = [w for cmd in commands(b.text) if (w := unrunnable(cmd))]
            if why:
                problems.append(
                    f"{b.where}: the doc test cannot run {', '.join(why)}: mark the block "
                    "`<!-- not-run: reason -->` or make it runnable"
                )
                continue
            log.unlink(missing_ok=True)
            done = subprocess.run(
                [BASH, "--noprofile", "--norc", "-c", b.text],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                problems.append(f"{b.where}: exit {done.returncode}: {done.stderr[-500:]}")
            records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            expect = int(b.marks.get("expect", 200))
            for r in records:
                if (problem := check_shape(r, expect)) is not None:
                    problems.append(f"{b.where}: {problem}")
                if r["status"] is not None:
                    last[r["path"]] = r["body"]
        elif b.lang == "python":
            code = re.sub(r"https?://(?:127\.0\.0\.1|localhost):8000", server.url, b.text)
            done = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                env={**os.environ, **env, "PATH": os.environ["PATH"]},
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                problems.append(f"{b.where}: python exited {done.returncode}: {done.stderr[-800:]}")
        elif b.lang == "json" and "response" in b.marks:
            route = b.marks["response"]
            if route not in last:
                problems.append(f"{b.where}: no request to {route} earlier in {b.doc}")
                continue
            missing = missing_keys(json.loads(b.text), json.loads(last[route]))
            if missing:
                problems.append(f"{b.where}: the real {route} answer has no {missing}")
        elif b.lang == "json" and "data" in b.marks:
            if (problem := check_data_row(b.marks["data"], b.text, tmp)) is not None:
                problems.append(f"{b.where}: {problem}")
        else:
            problems.append(
                f"{b.where}: a ```{b.lang or '(no language)'} block the doc test cannot run: label a diagram "
                "```text, or mark it `<!-- not-run: reason -->` (or `response: ROUTE`, `data: pairwise|ratings`)"
            )
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_example_runs_or_says_why_not(doc: Path, server: Server, shims: Path, tmp_path: Path) -> None:
    problems = run_doc(doc, server, shims, tmp_path)
    assert not problems, "\n".join(problems)


def test_the_steering_example_steers_on_objectives_the_default_has() -> None:
    """The steering example must be a runnable curl (not marked away) naming only objectives of the default."""
    service = ROOT / "docs" / "SERVICE.md"
    steering = [b for b in blocks(service) if "weights" in b.text and "/v1/score" in b.text and b.lang in SHELL]
    assert steering and all("not-run" not in b.marks for b in steering)


HISTORY = re.compile(r"session|round [0-9]|issue [0-9]", re.IGNORECASE)


def test_user_docs_carry_no_project_history() -> None:
    """`grep -niE 'session|round [0-9]|issue [0-9]' README.md docs/*.md` finds nothing: history is in
    research/NOTEBOOK.md."""
    found = [
        f"{doc.relative_to(ROOT)}:{i}: {line.strip()}"
        for doc in DOCS
        for i, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not found, "\n".join(found)


def test_user_docs_link_nothing_outside_the_repository() -> None:
    """Links resolve inside the checkout (../shared exists only beside the development checkout)."""
    bad = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            path = (doc.parent / target).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{doc.relative_to(ROOT)} → {target}")
    assert not bad, bad


def test_benchmarks_cite_only_files_in_the_repository() -> None:
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"\b(runs/[\w./-]+\.json)\b", text))
    assert cited <= tracked, sorted(cited - tracked)
