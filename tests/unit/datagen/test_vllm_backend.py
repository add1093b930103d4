"""The vllm backend without vLLM: engine arguments, the layer-id mapping vLLM's export uses, the
reading of the connector's files, and the driver's checks (with a stand-in engine that writes
files in the connector's documented format). The parity test against HF needs a GPU."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from speculators.artifacts.layer_ids import to_vllm_layer_ids
from speculators.config import DatagenConfig
from speculators.datagen.backends import vllm as backend_mod
from speculators.datagen.backends.vllm import (
    VllmBackend,
    capture_order,
    engine_kwargs,
    read_capture,
    scratch_dir,
)
from speculators.errors import UserInputError
from speculators.models import vllm as engine


def settings(**overrides) -> DatagenConfig:
    values = {"target_model_path": "/models/llama", "train_data_path": "sharegpt", **overrides}
    return DatagenConfig(**values)


# ---- engine arguments -------------------------------------------------------------------------


def test_engine_kwargs_map_the_flags():
    kw = engine_kwargs(settings(tensor_parallel_size=4, gpu_memory_utilization=0.6), [3], "/x")
    assert kw["model"] == "/models/llama"
    assert kw["max_model_len"] == 2048 + 2  # --seq-length default
    assert kw["tensor_parallel_size"] == 4
    assert kw["gpu_memory_utilization"] == 0.6
    assert kw["dtype"] == "bfloat16"
    assert kw["enforce_eager"] is False  # compiled unless --no-compile
    assert engine_kwargs(settings(no_compile=True), [3], "/x")["enforce_eager"] is True


def test_engine_kwargs_ask_for_the_supported_hidden_state_export():
    kw = engine_kwargs(settings(), [3, 17, 30, 32], "/dev/shm/x")
    spec = kw["speculative_config"]
    assert spec["method"] == "extract_hidden_states"
    assert spec["num_speculative_tokens"] == 1
    assert spec["draft_model_config"]["hf_config"]["eagle_aux_hidden_state_layer_ids"] == [
        3, 17, 30, 32,
    ]  # fmt: skip
    kv = kw["kv_transfer_config"]
    assert kv["kv_connector"] == "ExampleHiddenStatesConnector"
    assert kv["kv_role"] == "kv_producer"
    assert kv["kv_connector_extra_config"] == {"shared_storage_path": "/dev/shm/x"}


def test_engine_kwargs_admit_a_full_length_sample_prefilled_whole():
    s = settings(seq_length=4096, batch_size=16)
    kw = engine_kwargs(s, [1], "/x")
    # vLLM refuses a prompt of max_model_len tokens: one position is left for the output token,
    # one for the speculative method's lookahead.
    assert kw["max_model_len"] == s.seq_length + 2
    # A whole batch of full-length prompts fits one step's token budget.
    assert kw["max_num_batched_tokens"] >= s.batch_size * kw["max_model_len"]
    assert kw["max_num_seqs"] == s.batch_size
    assert kw["enable_chunked_prefill"] is False  # the export requires it
    assert kw["enable_prefix_caching"] is False  # reruns reproduce the files exactly


def test_scratch_dir_uses_shared_memory_only_when_it_has_room(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert scratch_dir(free // 4, shm=str(tmp_path)) == str(tmp_path)
    assert scratch_dir(free, shm=str(tmp_path)) is None  # room for one batch is not enough
    assert scratch_dir(1, shm=str(tmp_path / "absent")) is None


# ---- the layer-id convention as vLLM's export names it ----------------------------------------


def test_capture_order_asks_vllm_in_layer_order_and_maps_back():
    assert capture_order([2, 16, 29, 31]) == ([3, 17, 30, 32], [0, 1, 2, 3])
    # vLLM collects aux states in layer order whatever the order asked; ours may differ
    assert capture_order([29, 2, 16, 31]) == ([3, 17, 30, 32], [2, 0, 1, 3])


@pytest.fixture(scope="module")
def hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def _vllm_export(model, input_ids, vllm_ids):
    """What vLLM's Llama forward collects for `vllm_ids`, written from its documented rule
    (`_maybe_add_hidden_state`): id 0 is the embedding, id j >= 1 is `hidden + residual` after
    layer j - 1 ran, i.e. before the final norm (id n: the last layer's output, unnormalised)."""
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(
            lambda m, a, o, j=j + 1: outputs.__setitem__(j, o[0] if isinstance(o, tuple) else o)
        )
        for j, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        hf = model(input_ids, output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    outputs[0] = hf[0]
    return [outputs[j][0] for j in vllm_ids], hf


def test_our_ids_are_the_tensors_vllm_exports_under_the_mapped_ids(hf_llama):
    ids = torch.randint(0, 64, (1, 9))
    ours = [0, 2, 3, 4]  # aux layers, then the last of 5
    wanted, order = capture_order(ours)
    assert wanted == to_vllm_layer_ids(ours) == [1, 3, 4, 5]
    exported, hf = _vllm_export(hf_llama, ids, wanted)
    got = [exported[j] for j in order]
    n = len(hf_llama.model.layers)
    for our_id, tensor in zip(ours, got):
        if our_id < n - 1:  # SPEC §2: HF hidden_states[i + 1]
            torch.testing.assert_close(tensor, hf[our_id + 1][0])
            assert not torch.allclose(tensor, hf[our_id][0], atol=1e-3)  # not its neighbour
    # the last: before the final norm, which HF's last hidden state is after
    assert not torch.allclose(got[-1], hf[n][0], atol=1e-3)
    torch.testing.assert_close(hf_llama.model.norm(got[-1]), hf[n][0])


# ---- the connector's files ----------------------------------------------------------------------


def _write_export(path: Path, token_ids: list[int], states: torch.Tensor, lock: bool = True):
    """A file as vLLM's ExampleHiddenStatesConnector writes it: hidden_states [n, k, H] in the
    model dtype, token_ids [n], and a companion lock file."""
    save_file({"hidden_states": states, "token_ids": torch.tensor(token_ids)}, str(path))
    if lock:
        Path(str(path) + ".lock").touch()


def test_read_capture_reorders_checks_and_removes(tmp_path):
    states = torch.randn(6, 3, 8).to(torch.bfloat16)
    path = tmp_path / "req-1.safetensors"
    _write_export(path, [5, 6, 7, 8, 9, 10], states)
    got = read_capture(str(path), [5, 6, 7, 8, 9, 10], [2, 0, 1])
    assert [t.shape for t in got] == [(6, 8)] * 3 and got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], states[:, 2])
    torch.testing.assert_close(got[1], states[:, 0])
    assert not path.exists() and not Path(str(path) + ".lock").exists()
    # each layer owns its storage: a saved sample does not carry the other layers' rows
    buf = io.BytesIO()
    torch.save(got[0], buf)
    assert got[0].untyped_storage().nbytes() == 6 * 8 * 2


def test_read_capture_refuses_other_tokens_and_shapes(tmp_path):
    path = tmp_path / "a.safetensors"
    _write_export(path, [1, 2, 3], torch.zeros(3, 2, 4))
    with pytest.raises(RuntimeError, match="differ"):
        read_capture(str(path), [1, 2, 4], [0, 1])
    _write_export(path, [1, 2, 3], torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="shape"):
        read_capture(str(path), [1, 2, 3], [0])
    with pytest.raises(RuntimeError, match="cannot be read"):
        read_capture(str(tmp_path / "missing.safetensors"), [1], [0])


# ---- the driver, on a stand-in engine ----------------------------------------------------------


class FakeLLM:
    """Stands in for vllm.LLM with the export configured: per prompt, a file of 'hidden states'
    that encode (prompt position, token, vLLM layer id), so any mix-up shows."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.storage = kwargs["kv_transfer_config"]["kv_connector_extra_config"][
            "shared_storage_path"
        ]
        self.layers = kwargs["speculative_config"]["draft_model_config"]["hf_config"][
            "eagle_aux_hidden_state_layer_ids"
        ]
        self.calls = 0
        self.tamper = None

    def generate(self, prompts, sampling, use_tqdm=False):
        outs = []
        for p in prompts:
            self.calls += 1
            ids = p["prompt_token_ids"]
            path = os.path.join(self.storage, f"{self.calls}-abcd1234.safetensors")
            states = expected_states(ids, self.layers)
            _write_export(Path(path), self.tamper(ids) if self.tamper else ids, states)
            outs.append(
                types.SimpleNamespace(
                    prompt_token_ids=list(ids), kv_transfer_params={"hidden_states_path": path}
                )
            )
        return outs


def expected_states(ids, vllm_layers, hidden=4):
    n = len(ids)
    pos = torch.arange(n, dtype=torch.float32)[:, None, None]
    tok = torch.tensor(ids, dtype=torch.float32)[:, None, None]
    layer = torch.tensor(vllm_layers, dtype=torch.float32)[None, :, None]
    return (pos + 1000 * layer + tok / 100 + torch.zeros(1, 1, hidden)).to(torch.bfloat16)


@pytest.fixture
def fake_backend(monkeypatch, tiny_llama, tmp_path):
    fake_vllm = types.SimpleNamespace(
        __version__="0.26.0",
        LLM=FakeLLM,
        SamplingParams=lambda **kw: kw,
    )
    monkeypatch.setattr(engine, "import_vllm", lambda flag: fake_vllm)
    monkeypatch.setattr(engine, "require_gpu", lambda flag, alternative: None)
    monkeypatch.setattr(backend_mod, "_gpu_name", lambda: "fake GPU")
    monkeypatch.setattr(backend_mod, "scratch_dir", lambda need: str(tmp_path))
    config = settings(target_model_path=str(tiny_llama), batch_size=2)
    backend = VllmBackend(config, [3, 1, 2, 5])  # unsorted on purpose
    yield backend
    backend.close()


def test_fake_engine_captures_in_our_layer_order(fake_backend):
    batch = [[5, 6, 7], [8], [9, 10, 11, 12]]
    got = fake_backend.capture(batch)
    ours = [3, 1, 2, 5]
    for ids, sample in zip(batch, got):
        assert len(sample) == len(ours)
        for our_id, tensor in zip(ours, sample):
            want = expected_states(ids, [our_id + 1])[:, 0]  # vLLM id = ours + 1
            torch.testing.assert_close(tensor, want)
    assert os.listdir(fake_backend._tmp) == []  # every file read and removed


def test_fake_engine_launch_equals_capture(fake_backend):
    batches = [[[1, 2, 3], [4]], [[5, 6]], [[7, 8, 9, 10], [11, 12]]]
    pending = [fake_backend.launch(b) for b in batches]
    launched = [p.wait() for p in pending]
    for p in pending:
        p.release()
    for b, got in zip(batches, launched):
        for a, c in zip(got, fake_backend.capture(b)):
            assert all(torch.equal(x, y) for x, y in zip(a, c))


def test_fake_engine_wrong_tokens_are_refused_with_the_version(fake_backend):
    fake_backend._llm.tamper = lambda ids: [i + 1 for i in ids]
    with pytest.raises(UserInputError, match=r"--backend vllm: vLLM 0\.26\.0 returned hidden"):
        fake_backend.capture([[1, 2, 3]])


def test_engine_failure_is_one_message(fake_backend):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    fake_backend._llm.generate = boom
    with pytest.raises(UserInputError, match=r"vLLM 0\.26\.0 failed on a batch.*--batch-size"):
        fake_backend.capture([[1, 2]])


# ---- versions and installs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, parsed",
    [("0.26.0", (0, 26)), ("0.33.0+cu130", (0, 33)), ("1.2", (1, 2)), ("dev", None)],
)
def test_parse_version(version, parsed):
    assert engine.parse_version(version) == parsed


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_is_a_user_error_naming_the_install():
    with pytest.raises(UserInputError, match=r"pip install 'speculators\[datagen\]'"):
        VllmBackend(settings(), [1, 2, 3, 5])


def test_too_old_vllm_is_refused(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.12.0"))
    with pytest.raises(UserInputError, match=r"vllm 0\.12\.0 is too old.*>=0\.26"):
        engine.import_vllm("--backend vllm")
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.40.1"))
    with pytest.warns(UserWarning, match="newer than the tested range"):
        engine.import_vllm("--backend vllm")
