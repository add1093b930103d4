"""What a chat template writes around a reply: the end-of-turn token that closes it.

Shared by datagen (the token is supervised) and regenerate (generation stops at it).
"""

from __future__ import annotations

from typing import Any

# Stands in for one message's content; private-use characters never occur in real chat data.
MARKER = "\ue000speculators-content\ue001"


def _special_tokens(tokenizer: Any) -> list[str]:
    """Every special token's text, longest first (so `<|im_end|>` wins over a shorter prefix)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if t.special}
    return sorted((n for n in names if n), key=len, reverse=True)


def end_of_turn_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The special token(s) the chat template writes right after an assistant reply (whitespace
    between them allowed): `<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3. Read off renderings
    of a reply (a marker) in the middle and at the end of a conversation; empty when the template
    writes no special token there (then only the reply's text is supervised)."""
    user = {"role": "user", "content": "Hi"}
    reply = {"role": "assistant", "content": MARKER}
    specials = _special_tokens(tokenizer)
    found: list[str] = []
    for probe in ([user, reply, user], [user, reply]):
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # a template may insist on other roles; then this probe says nothing
            continue
        at = text.find(MARKER)
        rest = text[at + len(MARKER) :].lstrip() if at >= 0 else ""
        token = next((t for t in specials if rest.startswith(t)), None)
        if token is not None and token not in found:
            found.append(token)
    return tuple(found)
