"""Rule-based objectives on hand-written cases; every rule stays inside its stated range."""

from __future__ import annotations

import pytest

from armo.model_store import rules
from armo.model_store.rules import RuleInput

MSG = [{"role": "user", "content": "Write some code."}]


def x(response: str, tokens: int = 10) -> RuleInput:
    return RuleInput(MSG, response, tokens)


def test_verbosity_is_token_count() -> None:
    assert rules.evaluate("verbosity", x("anything", 42)) == 42.0


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("I'm sorry, but I can't help with that.", 1.0),
        ("As an AI language model, I do not have opinions.", 1.0),
        ("I cannot provide instructions for making weapons.", 1.0),
        ("Sure! Here is a recipe for bread: flour, water, salt, yeast.", 0.0),
        ("Sure. " + "Bread is great. " * 20 + "However, I cannot help with the second part.", 0.5),
    ],
)
def test_refusal(response: str, expected: float) -> None:
    assert rules.evaluate("refusal", x(response)) == expected
    assert rules.evaluate("compliance", x(response)) == 1.0 - expected


def test_repetition() -> None:
    assert rules.evaluate("repetition", x("the cat sat on the mat today")) == 0.0
    assert rules.evaluate("repetition", x("a b")) == 0.0  # fewer than 3 words: no trigrams
    # "a b c a b c a b c": 7 trigrams, 3 distinct -> 1 - 3/7
    assert rules.evaluate("repetition", x("a b c a b c a b c")) == pytest.approx(1 - 3 / 7)


def test_markdown() -> None:
    assert rules.evaluate("markdown", x("Plain text, nothing special.")) == 1.0
    assert rules.evaluate("markdown", x("Use `print` and **bold**.\n```python\nprint(1)\n```")) == 1.0
    assert rules.evaluate("markdown", x("```python\nprint(1)\n")) == pytest.approx(4 / 5)  # open fence
    assert rules.evaluate("markdown", x("**bold and `code")) == pytest.approx(3 / 5)  # ** and ` unbalanced
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 | 5 |"
    assert rules.evaluate("markdown", x(table)) == 1.0  # ≤ 2 distinct column counts are tolerated
    assert rules.evaluate("markdown", x(table + "\n| 6 |")) == pytest.approx(4 / 5)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("No code here, just words.", 0.5),
        ("```python\ndef f(x):\n    return x + 1\n```", 1.0),
        ("```python\ndef f(x)\n    return x + 1\n```", 0.0),  # missing colon
        ("```js\nfunction f() { return [1, 2]; }\n```", 1.0),
        ('```go\nfunc f() { return "}" \n```', 0.0),  # brace inside a string is ignored -> unbalanced
        ("```rust\nfn f() {}\n```\n```python\nprint(\n```", 0.5),
        ("```python\nprint(1)\n", 0.0),  # fence never closed
        ("    balance = 0\n    for op in ops:\n        balance += op\n    return balance\n", 1.0),  # a bare body
    ],
)
def test_code_parses(response: str, expected: float) -> None:
    assert rules.evaluate("code_parses", x(response)) == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(rules.RULES))
@pytest.mark.parametrize("response", ["", "x", "```", "((((", "I'm sorry " * 50, "| a |\n" * 3, "\x00\n\t"])
def test_rules_stay_in_range_and_never_raise(name: str, response: str) -> None:
    r = rules.RULES[name]
    value = r.fn(x(response, len(response)))
    assert r.low <= value <= r.high
    assert r.description


def test_every_rule_has_a_scale_floor_and_a_one_line_description() -> None:
    for r in rules.RULES.values():
        assert r.min_scale > 0 and "\n" not in r.description
    assert rules.RULES["markdown"].min_scale == 0.1  # one failed check of five (0.2) is at most 2 σ
    assert [n for n, r in rules.RULES.items() if r.legacy] == ["compliance"]  # kept for artifacts up to v0.4.0


def test_adding_a_rule_is_one_decorator() -> None:
    @rules.rule("_test_exclaims", 0.0, 1.0)
    def exclaims(inp: RuleInput) -> float:
        """1 if the response contains '!'."""
        return float("!" in inp.response)

    try:
        assert rules.evaluate("_test_exclaims", x("hi!")) == 1.0
        assert rules.RULES["_test_exclaims"].description == "1 if the response contains '!'."
        assert rules.RULES["_test_exclaims"].min_scale == 0.1  # by default a tenth of the range
    finally:
        del rules.RULES["_test_exclaims"]
