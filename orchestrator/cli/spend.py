"""Tokens and dollars as the CLI shows them: the report's spend rows, the one-line summary's
spend clause, a subagent's tokens on its timeline row."""

from __future__ import annotations

from workers.models import AgentResult, Prediction, RoiReport, RunProgress

__all__ = [
    "progress_spend",
    "spend_clause",
    "spend_rows",
    "tokens",
    "tokens_of",
    "unpriced_note",
    "usd",
]


def tokens(n: int | None) -> str:
    """A token count, short: 950, 12.3k, 4.56M."""
    if n is None:
        return "-"
    if n < 10_000:
        return f"{n:,}"
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1e6:.2f}M"


def usd(value: float | None) -> str:
    """Dollars: '-' when unknown (unpriced), never a guessed 0."""
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 10 else f"${value:,.2f}"


def spend_rows(r: RoiReport, p: Prediction | None) -> list[tuple[str, str, str]]:
    """(name, actual, predicted) rows for the report's table; none when nothing was spent."""
    predicted_tokens = p.tokens if p else None
    predicted_cost = p.cost_usd if p else None
    if not r.tokens_spent and predicted_tokens is None:
        return []
    rows = [
        ("tokens spent", tokens(r.tokens_spent), tokens(predicted_tokens)),
        ("  in / out", f"{tokens(r.input_tokens_spent)} / {tokens(r.output_tokens_spent)}", ""),
        ("tokens wasted", tokens(r.tokens_wasted), ""),
        ("cost spent", usd(r.cost_usd_spent), usd(predicted_cost)),
        ("cost wasted", usd(r.cost_usd_wasted), ""),
        ("cost per useful result", usd(r.cost_usd_per_useful_result), ""),
    ]
    if r.max_tokens is not None:
        rows.append(
            (
                "budget (tokens)",
                f"{tokens(r.max_tokens)}, over by {tokens(r.budget_overshoot_tokens)}",
                "",
            )
        )
    if r.max_cost_usd is not None:
        rows.append(
            (
                "budget (dollars)",
                f"{usd(r.max_cost_usd)}, over by {usd(r.budget_overshoot_usd)}",
                "",
            )
        )
    return rows


def unpriced_note(r: RoiReport) -> str | None:
    """The line that says which models had no price (their cost is unknown, not zero)."""
    if not r.unpriced_models:
        return None
    return (
        f"no price for model(s) {', '.join(r.unpriced_models)}: their cost is unknown "
        "(add them to ORCH_PRICES)"
    )


def spend_clause(r: RoiReport) -> str:
    """'; 12.3k tokens ($0.0123), 40% wasted' for the one-line summary ('' if none spent)."""
    if not r.tokens_spent:
        return ""
    cost = f" ({usd(r.cost_usd_spent)})" if r.cost_usd_spent is not None else ""
    wasted = r.tokens_wasted / r.tokens_spent if r.tokens_spent else 0.0
    return f"; {tokens(r.tokens_spent)} tokens{cost}, {wasted:.0%} wasted"


def tokens_of(env: AgentResult) -> str:
    """A subagent's spend on its timeline row ('' when it recorded none)."""
    if env.usage is None:
        return ""
    cost = f" {usd(env.usage.cost_usd)}" if env.usage.cost_usd is not None else ""
    return f", {tokens(env.usage.total_tokens)} tok{cost}"


def progress_spend(p: RunProgress) -> str:
    """The live spend of a run (watch's status line): '12.3k tokens / 20.0k, $0.0123'."""
    if not p.tokens_spent and p.max_tokens is None:
        return ""
    text = f"{tokens(p.tokens_spent)} tokens"
    if p.max_tokens is not None:
        text += f" of {tokens(p.max_tokens)}"
    if p.cost_usd_spent is not None:
        text += f", {usd(p.cost_usd_spent)}"
        if p.max_cost_usd is not None:
            text += f" of {usd(p.max_cost_usd)}"
    return text
