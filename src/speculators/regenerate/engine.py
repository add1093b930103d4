"""The engines that write replies, behind one small interface: transformers (batched `generate`,
CPU or GPU) and vLLM (GPU). Both take token ids and return token ids; the caller decodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from speculators.config.regenerate import RegenerateConfig
from speculators.models.vllm import choose_backend


@dataclass
class Reply:
    token_ids: list[int]  # the reply, without the stop token that ended it
    stopped: bool  # False: cut at its token budget


class Engine(Protocol):
    name: str
    device: str
    dtype: str
    max_context: int  # prompt + reply tokens the engine can hold

    def generate(
        self, prompts: list[list[int]], budgets: list[int], seeds: list[int]
    ) -> list[Reply]:
        """One reply per prompt, at most `budgets[i]` tokens; `seeds` make sampling repeatable."""
        ...

    def close(self) -> None: ...


def split_at_stop(token_ids: list[int], budget: int, stop_ids: set[int]) -> Reply:
    """The reply in `token_ids` (which may run on past a stop token, e.g. padding)."""
    token_ids = token_ids[:budget]
    for i, token in enumerate(token_ids):
        if token in stop_ids:
            return Reply(token_ids[:i], True)
    return Reply(token_ids, False)


def resolve_backend_name(config: RegenerateConfig) -> tuple[str, str | None]:
    """The engine to use and, when `auto` fell back to transformers, a note saying why."""
    return choose_backend(config.backend)


def load_engine(config: RegenerateConfig, name: str, stop_ids: set[int], pad_id: int) -> Engine:
    if name == "vllm":
        from speculators.regenerate.vllm_engine import VllmEngine

        return VllmEngine(config, stop_ids)
    from speculators.regenerate.hf_engine import TransformersEngine

    return TransformersEngine.from_config(config, stop_ids, pad_id)
