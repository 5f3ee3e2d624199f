"""Unit tests of the built-in agents' logic, called as plain functions (no broker, no worker)."""

from typing import cast

import pytest
from pydantic import ValidationError

import workers.agents
from workers.agents.search import (
    CHECK_EVERY,
    PowProblem,
    PowSolution,
    pow_digest,
    pow_guess,
    pow_solver,
    pow_valid,
)
from workers.agents.text import (
    Finding,
    ModuleRef,
    Report,
    has_facts,
    merge_findings,
    module_findings,
    module_stats,
    resolve_module,
)
from workers.context import AgentContext


class Cancelled(Exception):
    """What the stand-in context raises; the real runtime has its own exception."""


class FakeContext:
    """Stands in for AgentContext: counts checks and cancels after `cancel_after` of them."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.cancel_after = cancel_after
        self.checks = 0
        self.progress_reports: list[tuple[float, str]] = []

    def raise_if_cancelled(self) -> None:
        self.checks += 1
        if self.cancelled():
            raise Cancelled

    def cancelled(self) -> bool:
        return self.cancel_after is not None and self.checks > self.cancel_after

    def progress(self, fraction: float, message: str = "") -> None:
        self.progress_reports.append((fraction, message))


def as_ctx(fake: FakeContext) -> AgentContext:
    return cast(AgentContext, fake)


def test_package_exports_every_name() -> None:
    for name in workers.agents.__all__:
        assert getattr(workers.agents, name) is not None


# --- text ---------------------------------------------------------------------------------------


def test_resolve_module_finds_modules_and_packages() -> None:
    assert resolve_module("difflib").name == "difflib.py"
    assert resolve_module("json.decoder").parts[-2:] == ("json", "decoder.py")
    assert resolve_module("json").parts[-2:] == ("json", "__init__.py")


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("no_such_module_xyz", "not found"),
        ("json.no_such_submodule", "not found"),
        ("sys", "built into the interpreter"),
        ("../etc/passwd", "not a dotted module name"),
    ],
)
def test_resolve_module_explains_failures(module: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        resolve_module(module)
    assert repr(module) in str(info.value)


def test_module_ref_rejects_paths() -> None:
    with pytest.raises(ValidationError):
        ModuleRef(module="../../etc/passwd")


def test_unknown_module_raises_from_the_agent() -> None:
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        module_stats(ModuleRef(module="no_such_module_xyz"), as_ctx(FakeContext()))


def test_module_stats_plausible_for_difflib() -> None:
    ctx = FakeContext()
    stats = module_stats(ModuleRef(module="difflib"), as_ctx(ctx))
    assert stats.module == "difflib"
    assert stats.path.endswith("difflib.py")
    assert stats.lines > 1000
    assert 0 < stats.comment_lines < stats.code_lines < stats.lines
    assert stats.words > stats.lines
    assert stats.functions > 20
    assert stats.classes >= 3  # SequenceMatcher, Differ, HtmlDiff
    assert len(stats.top_words) == 10
    assert stats.top_words[0][0] == "self"
    counts = [count for _, count in stats.top_words]
    assert counts == sorted(counts, reverse=True)
    assert all(word not in {"def", "return", "if", "None"} for word, _ in stats.top_words)
    assert 0.0 < stats.docstring_coverage <= 1.0
    assert len(ctx.progress_reports) >= 2
    assert ctx.checks >= 2


def test_module_stats_stops_when_cancelled() -> None:
    with pytest.raises(Cancelled):
        module_stats(ModuleRef(module="difflib"), as_ctx(FakeContext(cancel_after=1)))


def test_module_findings_for_difflib() -> None:
    finding = module_findings(ModuleRef(module="difflib"), as_ctx(FakeContext()))
    assert finding.topic == "difflib"
    assert len(finding.facts) >= 5
    text = "\n".join(finding.facts)
    assert "SequenceMatcher" in text
    assert "longest function:" in text
    assert "imports" in text
    assert has_facts(finding)


def test_merge_findings_combines_in_order() -> None:
    findings = [
        Finding(topic="a", facts=["one", "two"]),
        Finding(topic="b", facts=[]),
        Finding(topic="c", facts=["three"]),
    ]
    report = merge_findings(findings, as_ctx(FakeContext()))
    assert isinstance(report, Report)
    assert report.topics == ["a", "b", "c"]
    assert report.facts == ["a: one", "a: two", "c: three"]
    assert report.summary.startswith("3 topics, 3 facts")
    assert "no facts for b" in report.summary


def test_merge_of_real_findings() -> None:
    ctx = as_ctx(FakeContext())
    findings = [module_findings(ModuleRef(module=m), ctx) for m in ("json.decoder", "difflib")]
    report = merge_findings(findings, ctx)
    assert report.topics == ["json.decoder", "difflib"]
    assert len(report.facts) == sum(len(f.facts) for f in findings)
    assert report.facts[0].startswith("json.decoder: ")


def test_has_facts() -> None:
    assert has_facts(Finding(topic="t", facts=["x"]))
    assert not has_facts(Finding(topic="t", facts=[]))
    assert not has_facts(Finding(topic="t", facts=["  "]))


# --- search -------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ascending", "descending", "stride", "random"])
def test_pow_solver_finds_a_valid_solution(strategy: str) -> None:
    problem = PowProblem.model_validate(
        {"challenge": "unit", "difficulty": 3, "strategy": strategy, "seed": 11}
    )
    solution = pow_solver(problem, as_ctx(FakeContext()))
    assert solution.digest.startswith("000")
    assert solution.digest == pow_digest("unit", solution.nonce)
    assert solution.strategy == strategy
    assert solution.tries >= 1
    assert pow_valid(solution)


def test_strategies_search_different_orders() -> None:
    nonces = {
        pow_solver(
            PowProblem.model_validate({"challenge": "order", "difficulty": 3, "strategy": s}),
            as_ctx(FakeContext()),
        ).nonce
        for s in ("ascending", "descending", "stride", "random")
    }
    assert len(nonces) == 4


def test_pow_solver_ascending_finds_the_smallest_nonce() -> None:
    solution = pow_solver(PowProblem(challenge="unit", difficulty=2), as_ctx(FakeContext()))
    assert solution.tries == solution.nonce + 1
    assert not any(pow_digest("unit", n).startswith("00") for n in range(solution.nonce))


def test_pow_valid_rejects_wrong_solutions() -> None:
    good = pow_solver(PowProblem(challenge="unit", difficulty=3), as_ctx(FakeContext()))
    assert pow_valid(good)
    assert not pow_valid(good.model_copy(update={"nonce": good.nonce + 1}))
    assert not pow_valid(good.model_copy(update={"challenge": "other"}))
    assert not pow_valid(good.model_copy(update={"digest": "0" * 64}))
    # A genuine digest that misses the difficulty is not a solution either.
    near = PowSolution(
        challenge="unit",
        difficulty=8,
        nonce=good.nonce,
        digest=good.digest,
        tries=1,
        strategy="ascending",
    )
    assert not pow_valid(near)


def test_pow_guess_is_quick_and_usually_invalid() -> None:
    guesses = [
        pow_guess(PowProblem(challenge=f"race-{i}", difficulty=5), as_ctx(FakeContext()))
        for i in range(50)
    ]
    # Each guess hashes 16 nonces, so it meets difficulty 5 with odds of about 1 in 65,000.
    assert sum(pow_valid(g) for g in guesses) == 0
    for guess in guesses:
        assert guess.digest == pow_digest(guess.challenge, guess.nonce)  # plausible, not forged
        assert guess.tries <= 16


def test_cancelled_context_stops_pow_solver() -> None:
    ctx = FakeContext(cancel_after=3)
    problem = PowProblem(challenge="never", difficulty=8)  # ~4 billion tries: never found here
    with pytest.raises(Cancelled):
        pow_solver(problem, as_ctx(ctx))
    assert ctx.checks == 4  # stopped at the first check after the flag went up


def test_pow_solver_gives_up_after_max_tries() -> None:
    problem = PowProblem(challenge="never", difficulty=8, max_tries=CHECK_EVERY + 5)
    with pytest.raises(RuntimeError, match=f"no nonce found in {CHECK_EVERY + 5:,} tries"):
        pow_solver(problem, as_ctx(FakeContext()))


def test_pow_problem_bounds() -> None:
    for bad in ({"difficulty": 0}, {"difficulty": 9}, {"strategy": "sideways"}, {"seed": -1}):
        with pytest.raises(ValidationError):
            PowProblem.model_validate({"challenge": "x", **bad})
