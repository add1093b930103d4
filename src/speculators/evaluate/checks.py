"""What `speculators eval` checks before it decodes: its output dir (writable, and no earlier
results replaced unless --overwrite) and that the verifier is the one the draft was trained on
(by the fingerprint the checkpoint records, not only by shapes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speculators.artifacts.atomic import remove_stale_temps
from speculators.artifacts.output_paths import check_output_dir
from speculators.artifacts.provenance import VerifierFingerprint
from speculators.config.eval import EvalConfig
from speculators.errors import UserInputError

RESULTS_FILE = "eval_results.json"
GENERATIONS_FILE = "generations.jsonl"
VERIFIER_FLAG = "--verifier-name-or-path"


def check_outputs(config: EvalConfig) -> None:
    """An eval_results.json already in --output-dir is kept unless --overwrite (a lone
    generations.jsonl is what an interrupted eval leaves, and is replaced)."""
    out = config.output_dir
    check_output_dir(out, "--output-dir")
    if (out / RESULTS_FILE).exists() and not config.overwrite:
        raise UserInputError(
            f"--output-dir {out} already holds {RESULTS_FILE} of an earlier eval. Pass another "
            "--output-dir, or --overwrite to replace it."
        )


def clear_outputs(output_dir: Path) -> None:
    """Before writing: the earlier results go first, so that at every moment an
    eval_results.json that exists belongs with the generations.jsonl beside it."""
    (output_dir / RESULTS_FILE).unlink(missing_ok=True)
    remove_stale_temps(output_dir, lambda name: name in (RESULTS_FILE, GENERATIONS_FILE))


def check_verifier(
    checkpoint: Path, draft_config: dict[str, Any], verifier: str, allow: bool
) -> list[str]:
    """The verifier's fingerprint is the one the draft's config.json records. Returns notes."""
    from speculators.models.fingerprint import verifier_fingerprint

    named = draft_config.get("speculators_config", {}).get("verifier", {})
    recorded = named.get("fingerprint")
    if not isinstance(recorded, dict):
        return [f"{checkpoint} records no verifier fingerprint (older version): checked by shapes "
                "and embeddings only"]  # fmt: skip
    diffs = VerifierFingerprint.model_validate(recorded).differences(
        verifier_fingerprint(verifier, VERIFIER_FLAG)
    )
    if not diffs:
        return []
    what = (
        f"the draft in {checkpoint} was trained on the verifier {named.get('name_or_path')}, and "
        f"{verifier} is another model (their {' and '.join(diffs)} differ)"
    )
    if allow:
        return [f"{what}; evaluating anyway (--allow-verifier-mismatch)"]
    raise UserInputError(
        f"{what}. A draft only works with the verifier it was trained on: pass that one with "
        f"{VERIFIER_FLAG} (or omit the flag to use the one the checkpoint names), or pass "
        "--allow-verifier-mismatch to measure it against this one anyway."
    )
