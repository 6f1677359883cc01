"""The RewardBench v1 formula on a hand-computed example."""

from __future__ import annotations

import pytest

from armo.training.rewardbench import SECTIONS, rewardbench_scores


def test_hand_computed_example() -> None:
    subsets, chosen, rejected = [], [], []

    def add(subset: str, outcomes: str) -> None:  # W = win, L = loss, T = tie
        for o in outcomes:
            subsets.append(subset)
            chosen.append({"W": 1.0, "L": 0.0, "T": 0.5}[o])
            rejected.append(0.5)

    for subs in SECTIONS.values():
        for s in subs:
            add(s, "WL")  # 50 % everywhere …
    add("alpacaeval-easy", "WW")  # … except alpacaeval-easy: 3 W / 1 L -> 75 %
    add("math-prm", "T")  # math-prm: W, L, T -> (1 + 0.5) / 3 = 50 %
    add("hep-go", "WW")  # hep-go: 3 W / 1 L -> 75 %
    add("anthropic_hhh", "WWWL")  # prior 75 %

    out = rewardbench_scores(subsets, chosen, rejected)
    assert out["per_subset"]["alpacaeval-easy"] == 75.0
    assert out["per_subset"]["math-prm"] == 50.0
    assert out["ties"] == 1 and out["ties_per_subset"] == {"math-prm": 1}
    # Chat: (75·100 + 50·(95 + 95 + 28 + 40)) / 358
    chat = (75 * 100 + 50 * 258) / 358
    # Reasoning: math-prm weighted 984, each hep-* 164: (50·984 + 75·164 + 50·5·164) / (984 + 6·164)
    reasoning = (50 * 984 + 75 * 164 + 50 * 5 * 164) / (984 + 6 * 164)
    assert out["per_section"]["Chat"] == pytest.approx(chat)
    assert out["per_section"]["Chat Hard"] == pytest.approx(50.0)
    assert out["per_section"]["Safety"] == pytest.approx(50.0)
    assert out["per_section"]["Reasoning"] == pytest.approx(reasoning)
    four = (chat + 50 + 50 + reasoning) / 4
    assert out["four_section_mean"] == pytest.approx(four)
    assert out["prior"] == 75.0 and out["prior_subsets"] == ["anthropic_hhh"]
    assert out["v1_score"] == pytest.approx((2 * (chat + 50 + 50 + reasoning) + 75) / 9)
    assert out["n_pairs"] == len(subsets)


def test_missing_sections_give_no_mean() -> None:
    out = rewardbench_scores(["alpacaeval-easy"], [1.0], [0.0])
    assert out["per_section"] == {"Chat": 100.0}
    assert out["four_section_mean"] is None and out["v1_score"] is None
    assert "math-prm" in out["missing_subsets"]
