"""The vLLM backend of datagen, on vLLM's supported hidden-state export.

vLLM (>= 0.26) can run a verifier with the `extract_hidden_states` speculative method: the
outputs of chosen decoder layers are written into a cache-only attention layer's KV cache, and
the `ExampleHiddenStatesConnector` KV connector saves each finished request's states to a
safetensors file (`hidden_states` [n, k, H], `token_ids` [n]) whose path comes back in the
request's `kv_transfer_params`. Both are public configuration (`speculative_config`,
`kv_transfer_config`); nothing of the model runner is touched, so the V1 and V2 runners and
tensor parallelism work alike. See docs/datagen-vllm.md.

Per batch: one prefill-only `LLM.generate` (max_tokens=1), then each file is read, checked
against the token ids we sent, put in our layer order and deleted. `launch` runs the generate
calls on one background thread, in order, so the writer threads read and store batch i while
the GPU already runs batch i + 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from speculators.artifacts.layer_ids import to_vllm_layer_ids
from speculators.errors import UserInputError, describe
from speculators.models import vllm as engine

FLAG = "--backend vllm"
CONNECTOR = "ExampleHiddenStatesConnector"


class EngineSettings(Protocol):
    """The DatagenConfig fields this backend reads."""

    target_model_path: str
    seq_length: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    batch_size: int
    no_compile: bool


def capture_order(layer_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """vLLM's layer ids to ask for (ascending: vLLM collects them in layer order, whatever
    order they are given in) and, per one of ours, its position among them."""
    wanted = sorted(set(to_vllm_layer_ids(layer_ids)))
    return wanted, [wanted.index(i) for i in to_vllm_layer_ids(layer_ids)]


def engine_kwargs(settings: EngineSettings, vllm_layer_ids: list[int], storage: str) -> dict:
    """Keyword arguments of `vllm.LLM` for prefill-only hidden-state export."""
    # vLLM refuses a prompt as long as max_model_len (it must leave room for one output
    # token), and the export, a speculative method, looks one token further ahead: a sample
    # of exactly --seq-length tokens needs two positions more.
    max_model_len = settings.seq_length + 2
    return {
        "model": settings.target_model_path,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_model_len": max_model_len,
        "dtype": "bfloat16",
        "enforce_eager": settings.no_compile,
        # A cached prefix would reuse states computed in another batch: the same values up to
        # rounding, but a rerun would not reproduce the files bit for bit.
        "enable_prefix_caching": False,
        # Required by the export: a prompt split into chunks is saved from its last chunk.
        "enable_chunked_prefill": False,
        "max_num_seqs": settings.batch_size,
        "max_num_batched_tokens": settings.batch_size * max_model_len,
        "speculative_config": {
            "method": "extract_hidden_states",
            "num_speculative_tokens": 1,
            "draft_model_config": {
                "hf_config": {"eagle_aux_hidden_state_layer_ids": vllm_layer_ids}
            },
        },
        "kv_transfer_config": {
            "kv_connector": CONNECTOR,
            "kv_role": "kv_producer",
            "kv_connector_extra_config": {"shared_storage_path": storage},
        },
        "disable_log_stats": True,
    }


def read_capture(path: str, sent: Sequence[int], order: Sequence[int]) -> list[torch.Tensor]:
    """One request's states as per-layer bf16 [n, H] tensors in our order; the file is checked
    against the tokens we sent and removed."""
    from safetensors.torch import load_file

    lock = path + ".lock"
    try:
        if os.path.exists(lock):  # the connector holds it until the file is written
            with open(lock) as f:
                fcntl.flock(f, fcntl.LOCK_SH)
        data = load_file(path)
    except OSError as e:
        raise RuntimeError(f"its hidden-state file {path} cannot be read ({describe(e)})") from e
    finally:
        for p in (path, lock):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
    ids, states = data["token_ids"].long(), data["hidden_states"]
    if not torch.equal(ids, torch.as_tensor(list(sent), dtype=torch.long)):
        raise RuntimeError(
            f"vLLM saved hidden states for {len(ids)} tokens that differ from the {len(sent)} "
            "tokens sent; refusing to store them."
        )
    if states.dim() != 3 or states.shape[0] != len(sent):
        raise RuntimeError(f"vLLM saved hidden states of shape {tuple(states.shape)}.")
    # clone: each sample file must hold its own rows, not a view of the whole file's storage
    return [states[:, j].to(torch.bfloat16, copy=True) for j in order]


def scratch_dir(need_bytes: int, shm: str = "/dev/shm") -> str | None:
    """Where vLLM hands the states over: RAM-backed `shm` when it has room for two batches
    (containers often mount a 64 MiB /dev/shm), else the system temp dir (None)."""
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    return shm if free >= 2 * need_bytes else None


def _gpu_name() -> str:
    from vllm.platforms import current_platform

    return str(current_platform.get_device_name(0))


class VllmBackend:
    """HiddenStatesBackend on vLLM: `capture` runs one prefill-only `LLM.generate` per batch."""

    name = "vllm"

    def __init__(
        self,
        config: EngineSettings,
        layer_ids: Sequence[int],
        engine_overrides: dict[str, Any] | None = None,
    ) -> None:
        """`engine_overrides` (extra `vllm.LLM` arguments) serve the benchmarks' random-weight
        verifiers (`load_format="dummy"`, `skip_tokenizer_init=True`)."""
        vllm = engine.import_vllm(FLAG)
        engine.require_gpu(FLAG, "use --backend transformers (or --backend auto, which picks it)")
        from speculators.artifacts.layer_ids import resolve_layer_ids
        from speculators.models.verifier import load_verifier_config

        self.vllm_version = str(vllm.__version__)
        verifier = load_verifier_config(config.target_model_path, "--target-model-path")
        self.hidden_size = int(verifier.hidden_size)
        self.num_layers = int(verifier.num_hidden_layers)
        self.layer_ids = resolve_layer_ids(layer_ids, self.num_layers)
        vllm_ids, self._order = capture_order(self.layer_ids)
        self.gpu_name = _gpu_name()
        batch_bytes = config.batch_size * config.seq_length * len(vllm_ids) * self.hidden_size * 2
        # Up to about four batches wait on disk: the one the GPU runs and those the writer holds.
        self._tmp = Path(
            tempfile.mkdtemp(prefix="speculators-vllm-", dir=scratch_dir(4 * batch_bytes))
        )
        self._vllm = vllm
        self._llm = None
        try:
            kwargs = engine_kwargs(config, vllm_ids, str(self._tmp)) | (engine_overrides or {})
            self._llm = engine.start_engine(vllm, kwargs, FLAG, config.target_model_path)
        except BaseException:
            self.close()
            raise
        self._sampling = vllm.SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="speculators-vllm")

    def capture(self, batch: list[list[int]]) -> list[list[torch.Tensor]]:
        return self.collect(self.generate(batch), batch) if batch else []

    def launch(self, batch: list[list[int]]) -> VllmPending:
        """Queue `batch` on the generate thread; its states are read by whoever waits."""
        assert self._llm is not None, "launch() after close()"
        return VllmPending(self, batch, self._thread.submit(self.generate, batch))

    def generate(self, batch: list[list[int]]) -> list[Any]:
        assert self._llm is not None, "generate() after close()"
        prompts = [{"prompt_token_ids": list(ids)} for ids in batch]  # vllm's TokensPrompt
        try:
            return list(self._llm.generate(prompts, self._sampling, use_tqdm=False))
        except Exception as e:
            raise engine.engine_error(e, self._vllm, FLAG, "failed on a batch") from None

    def collect(self, outputs: list[Any], batch: list[list[int]]) -> list[list[torch.Tensor]]:
        """Each output's states, checked against the prompt sent, in batch order."""
        try:
            if len(outputs) != len(batch):
                raise RuntimeError(f"{len(outputs)} outputs for {len(batch)} prompts")
            return [self._read(i, out, sent) for i, (out, sent) in enumerate(zip(outputs, batch))]
        except RuntimeError as e:
            raise UserInputError(
                f"{FLAG}: vLLM {self.vllm_version} returned hidden states that do not belong to "
                f"the prompts sent ({e}). Nothing of this batch was stored; every sample file "
                f"already written is complete. Use vllm{engine.SUPPORTED} or --backend "
                "transformers."
            ) from None

    def _read(self, i: int, out: Any, sent: list[int]) -> list[torch.Tensor]:
        path = (out.kv_transfer_params or {}).get("hidden_states_path")
        if not path:
            raise RuntimeError(f"output {i} names no hidden-state file")
        if list(out.prompt_token_ids) != list(sent):
            raise RuntimeError(f"output {i} is for another prompt")
        return read_capture(path, sent, self._order)

    def close(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)
        llm, self._llm = getattr(self, "_llm", None), None
        engine.shutdown(llm)
        shutil.rmtree(getattr(self, "_tmp", ""), ignore_errors=True)


@dataclass
class VllmPending:
    """A launched batch (PendingCapture): `wait` blocks until vLLM is done with it, then reads
    its files; the states are plain CPU tensors, so `release` has nothing to free."""

    backend: VllmBackend
    batch: list[list[int]]
    outputs: Future

    def wait(self) -> list[list[torch.Tensor]]:
        return self.backend.collect(self.outputs.result(), self.batch)

    def release(self) -> None:
        pass


def load_vllm_backend(config: EngineSettings, layer_ids: Sequence[int]) -> VllmBackend:
    """Entry point used by `load_backend` for `--backend vllm`."""
    return VllmBackend(config, layer_ids)
