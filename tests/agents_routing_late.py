"""One agent for the scale-from-zero test: only a worker started later has it."""

from __future__ import annotations

from pydantic import BaseModel

from workers import AgentContext, agent


class Word(BaseModel):
    text: str


@agent("late_echo", input=Word, output=Word, description="Echo; its workers start late.")
def late_echo(word: Word, ctx: AgentContext) -> Word:
    return word
