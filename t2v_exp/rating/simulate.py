"""Simulated raters with a known truth: for checking the analysis and for filling a demo study.

``answers``: one comparison, every rater answering every (prompt, seed), with per-prompt,
per-item and per-rater variation in the preference and a per-rater pull towards one screen side.
Every effect is uniform and centred, small enough that no probability leaves [0, 1], so the
population win rate is known exactly: ``truth``.

``rate_study``: raters answer a real study through the store (the same validation as the server),
preferring systems by known Bradley-Terry strengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .store import Store


@dataclass(frozen=True)
class Design:
    prompts: int = 24
    seeds: int = 2
    raters: int = 8
    preference_a: float = 0.7  # P(a preferred | not a tie), averaged over prompts and raters
    tie: float = 0.15  # P("same")
    prompt_spread: float = 0.1  # half-widths of the uniform effects on P(b preferred)
    item_spread: float = 0.04
    rater_spread: float = 0.08
    side_spread: float = 0.05  # a rater's pull towards the left (negative: right) side

    def check(self) -> None:
        worst = self.prompt_spread + self.item_spread + self.rater_spread + self.side_spread
        low, high = 1 - self.preference_a - worst, 1 - self.preference_a + worst
        if low < 0 or high > 1:
            raise ValueError(f"effects of {worst} around {1 - self.preference_a} leave [0, 1]: shrink them")

    @property
    def truth(self) -> float:
        """Population win rate of b, ties counted half."""
        return (1 - self.tie) * (1 - self.preference_a) + self.tie / 2


def answers(design: Design, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One simulated study: per answer its prompt, seed, rater, whether b was on the left, the
    on-screen choice and the b-score (1 b preferred, 0.5 same, 0 a preferred)."""
    design.check()
    prompt_effect = rng.uniform(-design.prompt_spread, design.prompt_spread, design.prompts)
    item_effect = rng.uniform(-design.item_spread, design.item_spread, (design.prompts, design.seeds))
    rater_effect = rng.uniform(-design.rater_spread, design.rater_spread, design.raters)
    side_pull = rng.uniform(-design.side_spread, design.side_spread, design.raters)
    prompt, seed, rater = (a.ravel() for a in np.meshgrid(np.arange(design.prompts), np.arange(design.seeds),
                                                          np.arange(design.raters), indexing="ij"))
    prefer_b = (1 - design.preference_a) + prompt_effect[prompt] + item_effect[prompt, seed] + rater_effect[rater]
    b_left = rng.random(prompt.size) < 0.5
    p_left = np.where(b_left, prefer_b, 1 - prefer_b) + side_pull[rater]
    tie = rng.random(prompt.size) < design.tie
    chose_left = rng.random(prompt.size) < p_left
    choice = np.where(tie, "same", np.where(chose_left, "left", "right"))
    score_b = np.where(tie, 0.5, (chose_left == b_left).astype(np.float64))
    return {"prompt": prompt, "seed": seed, "rater": rater, "b_left": b_left, "choice": choice, "score_b": score_b}


def rate_study(store: Store, *, raters: int, strengths: dict[str, float], tie: float = 0.1, seed: int = 0,
               biased: int = 0, scores: bool = False, first: int = 1) -> list[str]:
    """``raters`` simulated raters answer every assignment of a study through ``store``; the first
    ``biased`` of them always answer "left" (side-biased raters the analysis should flag); they are
    named "simulated rater <first>", "... <first + 1>", ... Returns the names."""
    rng = np.random.default_rng(seed)
    names = []
    for number in range(raters):
        name = f"simulated rater {first + number}"
        names.append(name)
        rater = store.rater(name)
        while (assignment := store.next_assignment(rater["id"])) is not None:
            item = store.items[assignment["item_id"]]
            left_system = assignment["left_system"]
            a, b = store.systems_of(item)
            systems = {"a": a, "b": b}
            identical = item["kind"] == "identical"
            given = {}
            for question in store.questions:
                gap = 0.0 if identical else strengths[systems["b"]] - strengths[systems["a"]]
                if scores:
                    b_score = int(np.clip(round(5.5 + 2 * gap + rng.normal(0, 1.2)), 1, 10))
                    a_score = int(np.clip(round(5.5 - 2 * gap + rng.normal(0, 1.2)), 1, 10))
                    given[question] = {"left": b_score if left_system == "b" else a_score,
                                       "right": a_score if left_system == "b" else b_score}
                    continue
                if identical and number >= biased:
                    given[question] = "same" if rng.random() < 0.95 else str(rng.choice(["left", "right"]))
                    continue
                if number < biased:  # a side-biased rater: left whenever they decide, identical pairs too
                    given[question] = "left"
                    continue
                if rng.random() < tie:
                    given[question] = "same"
                    continue
                b_wins = rng.random() < 1 / (1 + np.exp(-gap))
                winner = "b" if b_wins else "a"
                given[question] = "left" if winner == left_system else "right"
            store.answer(rater, {"assignment": assignment["id"], "answers": given, "elapsed_ms": 1000})
    return names
