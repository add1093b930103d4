"""Which turns the verifier answers, and one conversation's state while it is regenerated.

The verifier answers every user turn: the original assistant turns are dropped, and after each
run of consecutive non-assistant turns that holds a user turn comes the verifier's reply, written
with the conversation so far (its own earlier replies, not the original ones). Leading assistant
turns (nothing to answer yet) are dropped; trailing turns without a user turn are dropped too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def prompt_segments(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """The non-assistant messages that precede each reply, in order; [] when there is no user
    turn to answer."""
    segments: list[list[dict[str, str]]] = []
    current: list[dict[str, str]] = []
    for message in messages:
        if message["role"] == "assistant":
            if any(m["role"] == "user" and m["content"].strip() for m in current):
                segments.append(current)
                current = []
            continue  # an original reply, or nothing to reply to yet: dropped
        current.append(message)
    if any(m["role"] == "user" and m["content"].strip() for m in current):
        segments.append(current)
    return segments


@dataclass
class Dialogue:
    """One conversation being regenerated, reply by reply."""

    position: int  # in the seeded selection
    source_index: int  # record index in the source data
    record_id: str
    segments: list[list[dict[str, str]]]
    history: list[dict[str, str]] = field(default_factory=list)
    ended: str | None = None  # why it stopped early: a Stats field name

    @property
    def num_replies(self) -> int:
        return sum(m["role"] == "assistant" for m in self.history)

    @property
    def done(self) -> bool:
        return self.ended is not None or self.num_replies == len(self.segments)

    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation the next reply answers."""
        return [*self.history, *self.segments[self.num_replies]]

    def add_reply(self, text: str) -> None:
        self.history = [*self.prompt_messages(), {"role": "assistant", "content": text}]

    def end(self, why: str) -> None:
        self.ended = why


@dataclass
class Stats:
    """Counts over the conversations of a run (kept in the sidecar, summed over resumes)."""

    conversations: int = 0  # taken from the selection
    records: int = 0  # written: conversations with at least one reply
    replies: int = 0
    generated_tokens: int = 0
    no_user_turn: int = 0  # skipped: nothing to answer
    template_error: int = 0  # the chat template refused the conversation
    empty_reply: int = 0  # the verifier stopped at once (the conversation ends there)
    cut_at_max_new_tokens: int = 0  # a reply without its end-of-turn token ends the conversation
    reached_seq_length: int = 0

    def add(self, other: Stats) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))
