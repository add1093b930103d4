"""The vLLM backend of datagen: prefill-only requests, hidden states captured by worker hooks.

Targets vLLM 0.11.x-0.12.x (read from their source; see docs/datagen-vllm.md for the design).
The parts that do not need vllm are pure functions, tested everywhere; the hooks that run inside
vLLM's workers are in vllm_worker.py.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from speculators.datagen.backends.vllm_worker import StepCapture
from speculators.errors import UserInputError

SUPPORTED_VLLM = ">=0.11,<0.13"
INSTALL_HINT = "pip install 'speculators[datagen]'"
WORKER_EXTENSION = "speculators.datagen.backends.vllm_worker.HiddenStatesExtension"


class EngineSettings(Protocol):
    """The DatagenConfig fields this backend reads."""

    target_model_path: str
    seq_length: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    batch_size: int


def engine_kwargs(settings: EngineSettings) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for prefill-only hidden-state capture."""
    # vLLM rejects a prompt as long as max_model_len (it must leave room for one output
    # token), so a sample of exactly --seq-length tokens needs one position more.
    max_model_len = settings.seq_length + 1
    kwargs: dict[str, Any] = {
        "model": settings.target_model_path,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_model_len": max_model_len,
        "dtype": "bfloat16",
        # Python hooks only run in eager mode: CUDA graphs replay kernels without Python and
        # torch.compile would trace the hooks away.
        "enforce_eager": True,
        # A cached prefix is never recomputed, so its hidden states would never be seen.
        "enable_prefix_caching": False,
        # Whole prompts in one forward pass: one batch always fits the token budget, and no
        # prompt is split into chunks (0.11 forces chunking on; the budget makes it moot).
        "enable_chunked_prefill": False,
        "max_num_seqs": settings.batch_size,
        "max_num_batched_tokens": settings.batch_size * max_model_len,
        "async_scheduling": False,
        "worker_extension_cls": WORKER_EXTENSION,
        "disable_log_stats": True,
    }
    if settings.tensor_parallel_size > 1:
        # Worker processes on this host: they hand captures over through local files.
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


def vllm_version_supported(version: str) -> bool:
    """Whether `version` (vllm.__version__) lies in SUPPORTED_VLLM."""
    parts = version.split("+")[0].split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (0, 11) and (major, minor) < (0, 13)


def split_steps(
    steps: Sequence[StepCapture], prompts: Mapping[str, Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Cut each step's flattened tokens into per-request [num_layer_ids, n, H] tensors.

    In a step, request `req_ids[k]` owns the k-th run of tokens. With chunked prefill and
    prefix caching off every run is a whole prompt, which is checked here (positions 0..n-1
    and the very token ids sent), so a scheduling change is an error, never shifted data.
    A request seen twice (preempted and recomputed) keeps its last, complete capture.
    """
    out: dict[str, torch.Tensor] = {}
    for step_no, step in enumerate(steps):
        offset = 0
        for req_id in step["req_ids"]:
            if req_id not in prompts:
                raise RuntimeError(f"vLLM step {step_no} ran request {req_id!r}, not ours.")
            expected = torch.as_tensor(list(prompts[req_id]), dtype=torch.long)
            n = len(expected)
            positions = step["positions"][offset : offset + n].long()
            if not torch.equal(positions, torch.arange(n)):
                raise RuntimeError(
                    f"vLLM step {step_no}: request {req_id!r} was not prefilled whole (positions "
                    f"{positions[:3].tolist()}...); chunked prefill or prefix caching is on."
                )
            if not torch.equal(step["input_ids"][offset : offset + n].long(), expected):
                raise RuntimeError(
                    f"vLLM step {step_no}: request {req_id!r} ran other token ids than we sent."
                )
            out[req_id] = step["hidden"][:, offset : offset + n]
            offset += n
        if offset > len(step["positions"]):
            raise RuntimeError(f"vLLM step {step_no} holds fewer tokens than its requests.")
    missing = [r for r in prompts if r not in out]
    if missing:
        raise RuntimeError(f"vLLM returned no hidden states for requests {missing[:5]}.")
    return out


def match_requests(
    returned: Sequence[tuple[str, Sequence[int]]], batch: Sequence[Sequence[int]]
) -> dict[str, int]:
    """Map vLLM request ids to batch positions, checking each request's prompt token ids.

    `returned` is (request_id, prompt_token_ids) per vLLM output, in vLLM's output order.
    """
    if len(returned) != len(batch):
        raise RuntimeError(f"vLLM returned {len(returned)} outputs for {len(batch)} prompts.")
    index: dict[str, int] = {}
    for i, ((req_id, ids), sent) in enumerate(zip(returned, batch)):
        if list(ids) != list(sent):
            raise RuntimeError(
                f"vLLM output {i} (request {req_id!r}) has {len(ids)} prompt tokens that differ "
                f"from the {len(sent)} we sent."
            )
        index[req_id] = i
    return index


def to_samples(per_request: Mapping[str, torch.Tensor], index: Mapping[str, int]) -> list:
    """Per-request [num_layer_ids, n, H] -> per-sample lists of bf16 CPU [n, H], batch order."""
    samples: list[list[torch.Tensor]] = [[] for _ in index]
    for req_id, i in index.items():
        # clone: a view would drag the whole step's storage into each saved sample file
        samples[i] = [h.to(torch.bfloat16, copy=True) for h in per_request[req_id].cpu()]
    return samples


class VllmBackend:
    """HiddenStatesBackend on vLLM: `capture` runs one prefill-only `LLM.generate` per batch."""

    name = "vllm"

    def __init__(self, config: EngineSettings, layer_ids: Sequence[int]) -> None:
        try:
            import vllm
        except ImportError:
            raise UserInputError(
                f"--backend vllm: vllm is not installed. Install it with {INSTALL_HINT} "
                f"(vllm{SUPPORTED_VLLM}, needs a CUDA GPU), or use --backend transformers."
            ) from None
        if not torch.cuda.is_available():
            raise UserInputError(
                "--backend vllm needs a CUDA GPU and none is visible here; use --backend "
                "transformers (or --backend auto, which picks it)."
            )
        from speculators.artifacts.layer_ids import resolve_layer_ids
        from speculators.models.verifier import load_verifier_config

        self.vllm_version = str(vllm.__version__)
        if not vllm_version_supported(self.vllm_version):
            warnings.warn(
                f"vllm {self.vllm_version} is outside the tested range {SUPPORTED_VLLM}; "
                "every capture is still checked, so a mismatch fails loudly.",
                stacklevel=2,
            )
        verifier = load_verifier_config(config.target_model_path, "--target-model-path")
        self.hidden_size = int(verifier.hidden_size)
        self.num_layers = int(verifier.num_hidden_layers)
        self.layer_ids = resolve_layer_ids(layer_ids, self.num_layers)
        from vllm.platforms import current_platform

        # NVML, not torch.cuda: a CUDA context in this process would force vLLM to spawn workers
        self.gpu_name = str(current_platform.get_device_name(0))
        batch_bytes = config.batch_size * config.seq_length * len(self.layer_ids) * self.hidden_size
        scratch = scratch_dir(2 * batch_bytes)  # bf16
        self._tmp = Path(tempfile.mkdtemp(prefix="speculators-vllm-", dir=scratch))
        self._batches = 0
        self._llm = None
        try:
            self._llm = vllm.LLM(**engine_kwargs(config))
            counts = self._llm.collective_rpc("speculators_install", args=(self.layer_ids,))
        except BaseException:
            self.close()
            raise
        if any(c != self.num_layers for c in counts):
            self.close()
            raise RuntimeError(f"vLLM built {counts} decoder layers; config: {self.num_layers}.")
        self._sampling = vllm.SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)

    def capture(self, batch: list[list[int]]) -> list[list[torch.Tensor]]:
        if not batch:
            return []
        assert self._llm is not None, "capture() after close()"
        path = self._tmp / f"batch_{self._batches}.pt"
        self._batches += 1
        prompts = [{"prompt_token_ids": list(ids)} for ids in batch]  # vllm's TokensPrompt
        self._llm.collective_rpc("speculators_record")
        try:
            outputs = self._llm.generate(prompts, self._sampling, use_tqdm=False)
        finally:
            replies = self._llm.collective_rpc("speculators_collect", args=(str(path),))
        written = [p for p in replies if p]
        if len(written) != 1:
            raise RuntimeError(f"expected one capture file from tensor-parallel rank 0: {written}")
        steps = torch.load(path, weights_only=True)
        path.unlink()
        index = match_requests([(o.request_id, o.prompt_token_ids) for o in outputs], batch)
        per_request = split_steps(steps, {r: batch[i] for r, i in index.items()})
        return to_samples(per_request, index)

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            engine_core = getattr(llm.llm_engine, "engine_core", None)
            if engine_core is not None:
                engine_core.shutdown()
            del llm
            gc.collect()
            torch.cuda.empty_cache()
        shutil.rmtree(getattr(self, "_tmp", ""), ignore_errors=True)


def load_vllm_backend(config: EngineSettings, layer_ids: Sequence[int]) -> VllmBackend:
    """Entry point used by `load_backend` for `--backend vllm`."""
    return VllmBackend(config, layer_ids)


def scratch_dir(need_bytes: int, shm: str = "/dev/shm") -> str | None:
    """Where the worker hands captures over: RAM-backed `shm` when it has room for two batches
    (containers often mount a 64 MiB /dev/shm), else the system temp dir (None)."""
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    return shm if free >= 2 * need_bytes else None
