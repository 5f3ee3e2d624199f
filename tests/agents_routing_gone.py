"""One agent for the removed-agent test: its only worker stops for good."""

from __future__ import annotations

from pydantic import BaseModel

from workers import AgentContext, agent


class Word(BaseModel):
    text: str


@agent("vanishing", input=Word, output=Word, description="Echo; its worker goes away.")
def vanishing(word: Word, ctx: AgentContext) -> Word:
    return word
