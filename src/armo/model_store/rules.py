"""Rule-based objectives: pure, documented functions of (conversation, response).

Each rule has a stated range; the artifact records per rule objective an offset and scale that standardise it on a
reference distribution, and a sign: r = sign · (raw − offset) / scale. Adding a rule = one decorated function here:

    @rule("my_rule", 0.0, 1.0, min_scale=0.1)
    def my_rule(x: RuleInput) -> float:
        \"\"\"What it measures (the docstring becomes the objective's description in the manifest).\"\"\"
        return ...

`min_scale` is the floor of the standardisation scale (see `rule`). Rules must be deterministic, cheap (they run
on the request path) and never raise on any string.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from armo.model_store.encoding import Message


@dataclass(frozen=True)
class RuleInput:
    messages: Sequence[Message]
    response: str
    response_tokens: int  # backbone tokens of the response, including its end-of-turn token


RuleFn = Callable[[RuleInput], float]


@dataclass(frozen=True)
class Rule:
    name: str
    fn: RuleFn
    low: float
    high: float
    description: str  # one line: the docstring with its whitespace collapsed
    min_scale: float = 0.0  # floor of the standardisation scale (`rule`)
    legacy: bool = False  # kept so old artifacts load; training no longer offers it


RULES: dict[str, Rule] = {}


def rule(
    name: str, low: float, high: float, *, min_scale: float | None = None, legacy: bool = False
) -> Callable[[RuleFn], RuleFn]:
    """Register `fn` as rule `name` with range [low, high]; its docstring is its description.

    `min_scale` floors the scale a training run standardises the rule with (scale = max(std, min_scale) on the
    reference responses). A rule that almost never fires has a tiny spread, and one firing then lands many σ
    from the mean: `markdown`'s std of 0.016 in v0.4.0 made a single failed check (−0.2) about −12 σ, while every
    learned objective is standardised to unit variance and the gating, the explain page and steering compare the
    columns on that scale. The floors below are half of each rule's smallest meaningful step (one check of
    `markdown`'s five, `refusal`'s 0.5, `code_parses`' 0.5 from "no code" to pass or fail), so one discrete event
    moves r by at most 2 σ; a rule whose natural spread is larger keeps it. None: a tenth of the range (no floor
    for an unbounded range). `legacy` rules stay registered so the artifacts that list them still load and score;
    training refuses them.
    """

    def register(fn: RuleFn) -> RuleFn:
        floor = min_scale if min_scale is not None else (high - low) / 10 if math.isfinite(high - low) else 0.0
        RULES[name] = Rule(name, fn, low, high, " ".join((fn.__doc__ or "").split()), floor, legacy)
        return fn

    return register


@rule("verbosity", 0.0, float("inf"), min_scale=16.0)  # a floor far below any real spread
def verbosity(x: RuleInput) -> float:
    """Response length in backbone tokens."""
    return float(x.response_tokens)


_REFUSAL = re.compile(
    r"\b(i('m| am) sorry,? but|i (cannot|can't|can not|won't|will not|am unable to|'m unable to|am not able to|"
    r"must decline|do not feel comfortable|don't feel comfortable)|as an ai\b|i('m| am) (just )?an ai|"
    r"i apologi[sz]e,? but|it('s| is) not appropriate|i('m| am) not (able|going) to (help|assist|provide)|"
    r"(cannot|can't) (help|assist|provide|fulfill|comply) with|against my (guidelines|programming|principles))",
    re.IGNORECASE,
)


@rule("refusal", 0.0, 1.0, min_scale=0.25)
def refusal(x: RuleInput) -> float:
    """1 if the response opens with a refusal or an AI disclaimer (first 200 characters), 0.5 if one appears
    later, else 0."""
    head = x.response[:200]
    if _REFUSAL.search(head):
        return 1.0
    return 0.5 if _REFUSAL.search(x.response) else 0.0


@rule("compliance", 0.0, 1.0, min_scale=0.25, legacy=True)
def compliance(x: RuleInput) -> float:
    """Legacy (artifacts up to v0.4.0): 1 − refusal, the same signal with the other polarity. New runs list
    refusal with sign −1 instead (`objectives.negated_rules`, objective `rule-compliance`)."""
    return 1.0 - refusal(x)


_WORD = re.compile(r"\w+")


@rule("repetition", 0.0, 1.0, min_scale=0.1)  # continuous: a tenth of trigrams repeated is ≤ 1 σ
def repetition(x: RuleInput) -> float:
    """Fraction of repeated word trigrams: 1 − distinct/total (0 = no repeats; < 3 trigrams → 0)."""
    words = [w.lower() for w in _WORD.findall(x.response)]
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_FENCE_LINE = re.compile(r"^\s*(```|~~~).*$", re.MULTILINE)


def _markdown_checks(text: str) -> list[bool]:
    fences = len(_FENCE.findall(text))
    outside = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # checks below ignore code blocks …
    outside = _FENCE_LINE.sub("", outside)  # … and a fence line left open
    lines = outside.splitlines()
    inline_ok = all(line.count("`") % 2 == 0 for line in lines)
    bold_ok = all(line.count("**") % 2 == 0 for line in lines)
    links_ok = outside.count("](") <= min(outside.count("["), outside.count(")"))
    table_rows = [line for line in lines if line.strip().startswith("|")]
    table_ok = len({line.strip().count("|") for line in table_rows}) <= 2  # header/separator may differ slightly
    return [fences % 2 == 0, inline_ok, bold_ok, links_ok, table_ok]


@rule("markdown", 0.0, 1.0, min_scale=0.1)
def markdown(x: RuleInput) -> float:
    """Markdown well-formedness: fraction of checks passed — balanced code fences, balanced inline backticks
    and ** per line, link syntax, consistent table columns. Plain text scores 1."""
    checks = _markdown_checks(x.response)
    return sum(checks) / len(checks)


_BLOCK = re.compile(r"```([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PAIRS = {")": "(", "]": "[", "}": "{"}
_PY_HINT = re.compile(r"^\s*(def |class |import |from \w+ import|for .+:|if .+:|return\b|print\()", re.MULTILINE)


def _python_parses(code: str) -> bool:
    code = textwrap.dedent(code)
    for candidate in (code, "def _f():\n" + textwrap.indent(code, "    ")):
        try:
            ast.parse(candidate)
            return True
        except (SyntaxError, ValueError):
            continue
    return False


def _brackets_balanced(code: str) -> bool:
    """Brackets balance outside string literals and // or # comments (a language-agnostic parse check)."""
    code = re.sub(r'"(\\.|[^"\\\n])*"|\'(\\.|[^\'\\\n])*\'|//[^\n]*|#[^\n]*|/\*.*?\*/', "", code, flags=re.DOTALL)
    stack: list[str] = []
    for ch in code:
        if ch in "([{":
            stack.append(ch)
        elif ch in _PAIRS and (not stack or stack.pop() != _PAIRS[ch]):
            return False
    return not stack


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of every fenced block; an unfenced response that looks like Python is one block."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _BLOCK.finditer(text)]
    if not blocks and "```" not in text and _PY_HINT.search(text):
        blocks = [("python", text)]
    return blocks


@rule("code_parses", 0.0, 1.0, min_scale=0.25)
def code_parses(x: RuleInput) -> float:
    """Fraction of code blocks that parse: Python (tag python/py, or untagged and Python-looking) with `ast`,
    other languages by bracket balance; a fence left open counts as a failure; 0.5 when there is no code."""
    blocks = code_blocks(x.response)
    unclosed = len(_FENCE.findall(x.response)) % 2
    if not blocks and not unclosed:
        return 0.5
    ok = 0
    for lang, code in blocks:
        python = lang in {"python", "py", "python3"} or (lang == "" and _PY_HINT.search(code) is not None)
        ok += _python_parses(code) if python else _brackets_balanced(code)
    return ok / (len(blocks) + unclosed)


def evaluate(name: str, x: RuleInput) -> float:
    return RULES[name].fn(x)
