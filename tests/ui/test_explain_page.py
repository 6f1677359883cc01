"""The explain page (/ui) in a real browser (Playwright driving Debian's Chromium) against a real `armo serve` on the
bundled default model: the numbers on the page are /v1/explain's and /v1/compare's, steering re-ranks live, API
errors are shown as the API words them, and the main flow works from the keyboard alone. Screenshots go to
runs/ui-screenshots (CI artefacts); ARMO_UI_DOCS_SCREENSHOT=1 also refreshes docs/ui.png for the README."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.store import ModelStore
from tests.live import API_KEY, ROOT, Server, armo_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by scripts/setup.sh")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is missing: scripts/setup.sh installs Debian's chromium", allow_module_level=True)

SHOTS = ROOT / "runs" / "ui-screenshots"
QUESTION = "How do I boil an egg so the yolk stays soft?"
RESPONSES = [
    "Lower the egg into boiling water for 6 minutes, then cool it in cold water for a minute. The yolk stays soft.",
    "Boil it.",
    "Eggs are a good source of protein. Many people like them for breakfast.",
]
TEMPLATED = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{RESPONSES[0]}<|im_end|>\n"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("ui")
    with armo_server(ModelStore(BUNDLED_ROOT), workdir, ARMO_MODEL=DEFAULT_MODEL) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: Server, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/ui/")
    yield page
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors  # no script error on the way


def unlock(page: Any) -> None:
    """The server has API keys: the page asks for one after its first 401."""
    page.wait_for_selector("#key-box:not([hidden])")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#steering .steer-row")


def fill_responses(page: Any, texts: list[str]) -> None:
    while page.locator("#responses textarea").count() < len(texts):
        page.click("#add-response")
    for i, text in enumerate(texts):
        page.locator("#responses textarea").nth(i).fill(text)


def values(page: Any, selector: str) -> list[float]:
    return [float(v) for v in page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.value)")]


def api(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def test_page_numbers_are_the_apis(page: Any, server: Server) -> None:
    unlock(page)
    # A templated text, as OpenRLHF would send it, split into turns by the service.
    page.click("#tab-templated")
    page.fill("#templated", TEMPLATED)
    page.click("#split")
    page.wait_for_function(
        "document.querySelector('#turns textarea') && document.querySelector('#turns textarea').value"
    )
    assert page.locator("#turns textarea").first.input_value() == QUESTION
    assert page.locator("#responses textarea").first.input_value() == RESPONSES[0]
    fill_responses(page, RESPONSES)
    page.click("#score")
    page.wait_for_selector(f"#result-{len(RESPONSES) - 1} .facts")

    messages = [{"role": "user", "content": QUESTION}]
    explained = api(server, "/v1/explain", {"items": [{"messages": messages, "response": r} for r in RESPONSES]})
    compared = api(server, "/v1/compare", {"messages": messages, "responses": RESPONSES})
    for i, want in enumerate(explained["results"]):
        card = f"#result-{i}"
        [score] = values(page, f"{card} .facts [data-field=score]")
        assert score == pytest.approx(want["score"], abs=1e-9)
        assert page.locator(f"{card} .facts [data-field=score]").inner_text() == f"{want['score']:.4f}"
        assert int(page.get_attribute(f"{card} .facts", "data-tokens") or -1) == want["tokens"]
        for field, key in (("raw", "rewards"), ("debiased", "debiased"), ("contribution", "contributions")):
            shown = values(page, f"{card} tr[data-objective] [data-field={field}]")
            assert shown == pytest.approx([want[key][n] for n in explained["objectives"]], abs=1e-9)
        [total] = values(page, f"{card} [data-field=sum]")
        assert total == pytest.approx(want["score"], abs=1e-4)  # the contributions add up to the score
    gating = values(page, "#gating-table [data-field=weight]")
    assert gating == pytest.approx([explained["results"][0]["weights"][n] for n in explained["objectives"]], abs=1e-9)
    # Best-of-N: the ranking and every P(a ≻ b) of the heat map.
    ranking = page.eval_on_selector_all("#ranking li", "els => els.map(e => Number(e.dataset.index))")
    assert ranking == compared["ranking"]
    for pair in compared["pairwise"]:
        [p] = values(page, f"#heatmap-table td[data-a='{pair['a']}'][data-b='{pair['b']}'] .num")
        assert p == pytest.approx(pair["p_a_over_b"], abs=1e-9)
    # The reproduced request is the one the page sent.
    page.click("#copy-curl")
    snippet = page.inner_text("#snippet")
    assert snippet.startswith(f"curl -s {server.url}/v1/explain") and "Bearer $ARMO_API_KEY" in snippet
    page.click("#copy-python")
    assert "RewardClient" in page.inner_text("#snippet")
    if os.environ.get("ARMO_UI_DOCS_SCREENSHOT") == "1":
        page.screenshot(path=str(ROOT / "docs" / "ui.png"), full_page=True)


def test_steering_re_ranks_live(page: Any, server: Server) -> None:
    unlock(page)
    page.locator("#turns textarea").first.fill(QUESTION)
    fill_responses(page, RESPONSES)
    page.click("#score")
    page.wait_for_selector("#ranking li")
    messages = [{"role": "user", "content": QUESTION}]
    explained = api(server, "/v1/explain", {"items": [{"messages": messages, "response": r} for r in RESPONSES]})
    best = max(range(len(RESPONSES)), key=lambda i: explained["results"][i]["score"])
    # An objective on which another response is best: keeping only it must change the winner.
    names = explained["objectives"]
    keep = next(n for n in names if max(range(3), key=lambda i: explained["results"][i]["debiased"][n]) != best)
    for i, name in enumerate(names):
        if name != keep:
            page.uncheck(f"#keep-{i}")
    mask = [n for n in names if n != keep]
    steered = api(server, "/v1/compare", {"messages": messages, "responses": RESPONSES, "mask": mask})
    assert steered["ranking"][0] != best
    page.wait_for_function(
        f"Number(document.querySelector('#ranking li').dataset.index) === {steered['ranking'][0]}", timeout=20_000
    )
    assert page.locator(".moved").count() >= 2  # the page says which responses moved, and from where
    page.click("#reset-steering")
    page.wait_for_function(f"Number(document.querySelector('#ranking li').dataset.index) === {best}", timeout=20_000)


def test_api_errors_are_shown_as_the_api_words_them(page: Any, server: Server) -> None:
    page.wait_for_selector("#key-box:not([hidden])")
    page.fill("#api-key", "not-the-key-000")
    page.press("#api-key", "Enter")
    wrong = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer not-the-key-000"}).json()["error"]
    page.wait_for_selector("#error:not([hidden]) .message")
    assert page.inner_text("#error .message") == wrong["message"]
    assert page.is_visible("#key-box")  # asked again
    unlock(page)
    # A conversation that ends with an assistant turn: the API refuses it and names the field.
    page.locator("#turns textarea").first.fill(QUESTION)
    page.select_option("#turns select", "assistant")
    fill_responses(page, RESPONSES[:1])
    page.click("#score")
    body = {"items": [{"messages": [{"role": "assistant", "content": QUESTION}], "response": RESPONSES[0]}]}
    r = httpx.post(f"{server.url}/v1/explain", json=body, headers=AUTH)
    assert r.status_code == 422
    page.wait_for_selector("#error:not([hidden]) .field")
    assert page.inner_text("#error .message") == r.json()["error"]["message"]
    assert page.inner_text("#error .field") == f"(field: {r.json()['error']['field']})"


def test_main_flow_by_keyboard_alone(page: Any) -> None:
    page.wait_for_selector("#key-box:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "api-key"  # the page put the focus where it asks
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#steering .steer-row")

    def tab_to(predicate: str, limit: int = 40) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(predicate):
                return
        raise AssertionError(f"Tab never reached {predicate}")

    tab_to("document.activeElement.classList.contains('turn-text')")
    page.keyboard.type(QUESTION)
    for text in RESPONSES[:2]:
        tab_to("document.activeElement.classList.contains('response-text') && !document.activeElement.value")
        page.keyboard.type(text)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#result-1 .facts")
    tab_to("document.activeElement.id === 'keep-0'", limit=60)
    page.keyboard.press("Space")  # mask the first objective: the page re-scores by itself
    page.wait_for_function("document.querySelector('#status').textContent.includes('steered')", timeout=20_000)
    assert page.locator("#result-1 .facts [data-field=score]").count() == 1
