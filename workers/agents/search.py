"""Proof-of-work search agents: slow to solve, instant to check.

That asymmetry is what race-then-cancel needs: several racers search the same problem in different
orders, the validator checks a candidate with one hash, and the losers are cancelled mid-search.
A solution is a nonce such that ``sha256(challenge + str(nonce))`` starts with ``difficulty`` zero
hex digits, so ``16 ** difficulty`` tries are expected. Pure Python hashes about 2-2.5 million
nonces a second on a current core, so difficulty 5 (about a million tries) takes about 0.4 s on
average and difficulty 6 about 7 s; any single search varies widely, as the count is geometric.
"""

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from workers.context import AgentContext
from workers.registry import agent, validator

Strategy = Literal["ascending", "descending", "stride", "random"]

# Tries between cancellation checks: about 1 ms of hashing, so a cancel lands quickly, while the
# check itself (which may read a flag in Redis) stays well under 1% of the work.
CHECK_EVERY = 2048
# Chunks between progress reports: about 0.1-0.2 s, often enough for a live view, rare enough
# not to flood the event stream.
PROGRESS_EVERY_CHUNKS = 128
DESCENDING_START = 2**52
# Stride racers whose seeds differ modulo this step never hash the same nonce.
STRIDE_STEP = 7919
MAX_SEED = 2**48
MAX_TRIES_LIMIT = 10**10
# Every nonce we generate stays below 2**53 (JSON-safe for JavaScript clients); the validator
# accepts up to 2**64 so that str(nonce) stays cheap for any candidate.
MAX_NONCE = 2**64
# How many nonces the guesser hashes: too few to meet difficulty >= 4 except by luck.
GUESS_TRIES = 16


class PowProblem(BaseModel):
    """Find a nonce such that sha256(challenge + str(nonce)) starts with `difficulty` zeros."""

    challenge: str = Field(max_length=1024, description="The text the nonce is appended to.")
    difficulty: int = Field(
        default=5,
        ge=1,
        le=8,
        description="Leading zero hex digits required; ~16**difficulty tries.",
    )
    strategy: Strategy = Field(
        default="ascending",
        description=(
            "Search order: ascending from seed; descending from 2**52 - seed; stride from seed in "
            f"steps of {STRIDE_STEP}; random draws from random.Random(seed)."
        ),
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Start point or random seed.")
    max_tries: int = Field(
        default=50_000_000,
        ge=1,
        le=MAX_TRIES_LIMIT,
        description="Give up (an error) after this many tries.",
    )


class PowSolution(BaseModel):
    """A candidate answer to a PowProblem; `pow_valid` tells whether it really is one."""

    challenge: str = Field(max_length=1024, description="The challenge that was solved.")
    difficulty: int = Field(ge=1, le=8, description="Leading zero hex digits claimed.")
    nonce: int = Field(ge=0, le=MAX_NONCE, description="The nonce found.")
    digest: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256(challenge + str(nonce)) in lowercase hex."
    )
    tries: int = Field(ge=0, description="Nonces hashed to get here.")
    strategy: str = Field(description="The search order that was used.")


def pow_digest(challenge: str, nonce: int) -> str:
    """The hex sha256 of the challenge followed by the nonce's decimal digits (UTF-8)."""
    return hashlib.sha256((challenge + str(nonce)).encode()).hexdigest()


def _bound(difficulty: int) -> bytes:
    # `difficulty` leading zero hex digits <=> the 256-bit digest is below 16**(64 - difficulty);
    # equal-length bytes compare like the numbers they encode, which is cheaper than hexdigest().
    return (1 << 4 * (64 - difficulty)).to_bytes(32, "big")


def _nonce_chunks(problem: PowProblem) -> Iterator[Sequence[int]]:
    """Yield the strategy's nonces in chunks of CHECK_EVERY, max_tries in total."""
    rng = random.Random(problem.seed)
    done = 0
    while done < problem.max_tries:
        size = min(CHECK_EVERY, problem.max_tries - done)
        if problem.strategy == "ascending":
            start = problem.seed + done
            yield range(start, start + size)
        elif problem.strategy == "descending":
            start = DESCENDING_START - problem.seed - done
            yield range(start, start - size, -1)
        elif problem.strategy == "stride":
            start = problem.seed + done * STRIDE_STEP
            yield range(start, start + size * STRIDE_STEP, STRIDE_STEP)
        else:
            yield [rng.getrandbits(53) for _ in range(size)]
        done += size


def _solution(problem: PowProblem, nonce: int, tries: int) -> PowSolution:
    return PowSolution(
        challenge=problem.challenge,
        difficulty=problem.difficulty,
        nonce=nonce,
        digest=pow_digest(problem.challenge, nonce),
        tries=tries,
        strategy=problem.strategy,
    )


@agent(
    "pow_solver",
    input=PowProblem,
    output=PowSolution,
    description="Search nonces in the given order until the sha256 proof-of-work is met.",
)
def pow_solver(problem: PowProblem, ctx: AgentContext) -> PowSolution:
    """Hash nonces until one meets the difficulty; cancellable every CHECK_EVERY tries."""
    bound = _bound(problem.difficulty)
    base = hashlib.sha256(problem.challenge.encode())
    expected_tries = 16**problem.difficulty
    tries = 0
    for chunk_number, chunk in enumerate(_nonce_chunks(problem), start=1):
        ctx.raise_if_cancelled()
        for nonce in chunk:
            # Copying the hashed challenge saves rehashing it for every nonce.
            h = base.copy()
            h.update(str(nonce).encode())
            if h.digest() < bound:
                return _solution(problem, nonce, tries + chunk.index(nonce) + 1)
        tries += len(chunk)
        if chunk_number % PROGRESS_EVERY_CHUNKS == 0:
            # The search has no known end, so report the chance a solution should have turned up
            # by now, or the share of the try budget used, whichever is further along.
            chance = 1.0 - math.exp(-tries / expected_tries)
            fraction = min(0.99, max(chance, tries / problem.max_tries))
            ctx.progress(fraction, f"{tries:,} tries, no solution yet")
    raise RuntimeError(
        f"no nonce found in {tries:,} tries (difficulty {problem.difficulty}, strategy "
        f"{problem.strategy}, seed {problem.seed}); raise max_tries or lower the difficulty"
    )


@agent(
    "pow_guess",
    input=PowProblem,
    output=PowSolution,
    description="Fast heuristic racer: returns its best of a few nonces, usually NOT a solution.",
)
def pow_guess(problem: PowProblem, ctx: AgentContext) -> PowSolution:
    """Hash a handful of nonces and return the best-looking one, met difficulty or not.

    It finishes first and looks plausible (its digest is real), so it shows a race moving on from
    an invalid first finisher to the next valid one.
    """
    ctx.raise_if_cancelled()
    budget = min(GUESS_TRIES, problem.max_tries)
    nonces = next(_nonce_chunks(problem.model_copy(update={"max_tries": budget})))
    # Smallest digest = most leading zeros: the closest this guesser gets to a real answer.
    best = min(nonces, key=lambda n: pow_digest(problem.challenge, n))
    return _solution(problem, best, budget)


@validator(
    "pow_valid",
    input=PowSolution,
    description="Recompute the digest; true only if it matches and meets the difficulty.",
)
def pow_valid(solution: PowSolution) -> bool:
    """Check a candidate with one hash: the digest must be genuine and start with enough zeros."""
    digest = pow_digest(solution.challenge, solution.nonce)
    return digest == solution.digest and digest.startswith("0" * solution.difficulty)
