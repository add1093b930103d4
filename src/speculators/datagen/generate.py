"""The generation loop: length-sorted batches through the backend, one batch in flight on the
device while the previous one is written by background threads.

Per batch i the loop (1) launches batch i (forward pass and device-to-host copy queued, not
awaited), then (2) hands batch i-1 to the writer, whose threads wait for its copy and write
its files. So the thread that launches forwards never waits for the GPU or the disk, except
when the writer holds its maximum of pending batches (then the disk is the bottleneck).
Backends without `launch` (vLLM) run the same loop with a synchronous capture. On an error the
batches already handed to the writer are still written (the batch in flight is not: a rerun
computes it); files appear by rename only once complete, so a rerun resumes cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from speculators.artifacts.sample_files import sample_path
from speculators.datagen.backends.base import HiddenStatesBackend, PendingCapture, launch_capture
from speculators.datagen.writer import SampleWriter
from speculators.errors import UserInputError, WriteError, describe

# on_progress(num_samples_done, num_samples_total, num_tokens_computed_this_run)
ProgressFn = Callable[[int, int, int], None]


class SampleSource(Protocol):
    """What the loop reads of the tokenized data (datagen.preprocess.TokenizedData)."""

    @property
    def num_samples(self) -> int: ...

    def sample(self, idx: int) -> tuple[list[int], list[int]]: ...

    def lengths(self) -> list[int]: ...


@dataclass
class GenerationStats:
    bytes_written: int = 0
    num_tokens: int = 0  # real tokens through the verifier
    num_padded_tokens: int = 0  # batch rows x batch width: what the forward passes computed
    seconds: float = 0.0  # the whole loop, until the last file is written
    launch_seconds: float = 0.0  # inside backend launch/capture (includes its own GPU waits)
    writer_wait_seconds: float = 0.0  # blocked because the writer held its maximum of batches
    drain_seconds: float = 0.0  # after the last launch, waiting for the last files


def length_sorted_batches(lengths: Sequence[int], todo: list[int], size: int) -> list[list[int]]:
    """Longest first (an out-of-memory error shows up at once, and the first batch is the
    largest, which the host buffers are sized by), neighbours in length together."""
    order = sorted(todo, key=lambda i: (-lengths[i], i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def generate_samples(
    backend: HiddenStatesBackend,
    data: SampleSource,
    todo: list[int],
    output_dir: Path,
    batch_size: int,
    on_progress: ProgressFn | None = None,
    pipelined: bool = True,
    writer: SampleWriter | None = None,
    batches: list[list[int]] | None = None,
) -> GenerationStats:
    """Compute and write the samples `todo` of `data` as `output_dir/data_{idx}.pt`.

    The batches are those of a run over every sample, and a batch with any sample in `todo` runs
    whole (only its missing samples are written): a resumed run computes each sample in the
    same batch, with the same padding, as an uninterrupted one, so its files are bit-identical.
    `batches`: the ones this process computes, as datagen.shards picks them from that list
    (default: all of it); progress counts the samples in them.
    """
    writer = writer or SampleWriter()
    stats, start = GenerationStats(), time.perf_counter()
    lengths = data.lengths()
    if batches is None:
        batches = length_sorted_batches(lengths, list(range(data.num_samples)), batch_size)
    ours = {i for b in batches for i in b}
    missing = set(todo) & ours
    total = len(ours)
    done = total - len(missing)
    in_flight: tuple[list[Path | None], list[tuple[list[int], list[int]]], PendingCapture] | None
    in_flight = None
    try:
        for batch in (b for b in batches if missing.intersection(b)):
            launched = time.perf_counter()
            samples = [data.sample(i) for i in batch]
            pending = _launch(backend, [ids for ids, _ in samples], pipelined, batch_size)
            stats.launch_seconds += time.perf_counter() - launched
            if in_flight is not None:
                writer.put_batch(*in_flight)
            paths = [sample_path(output_dir, i) if i in missing else None for i in batch]
            in_flight = (paths, samples, pending)
            done += sum(p is not None for p in paths)
            stats.num_tokens += sum(lengths[i] for i in batch)
            stats.num_padded_tokens += len(batch) * max(lengths[i] for i in batch)
            if on_progress is not None:
                on_progress(done, total, stats.num_tokens)
        if in_flight is not None:
            writer.put_batch(*in_flight)
        drain = time.perf_counter()
        writer.close()
        stats.drain_seconds = time.perf_counter() - drain
    except BaseException as e:
        # Queued batches are still written: every file that exists afterwards is complete.
        writer.close(raise_error=False)
        if e is writer.error and isinstance(e, (OSError, WriteError)):
            cause = e.error if isinstance(e, WriteError) else e
            raise _write_error(writer, output_dir, cause) from cause
        raise
    stats.bytes_written = writer.bytes_written
    stats.writer_wait_seconds = writer.wait_seconds
    stats.seconds = time.perf_counter() - start
    return stats


def _launch(
    backend: HiddenStatesBackend,
    batch: list[list[int]],
    pipelined: bool,
    batch_size: int,
) -> PendingCapture:
    try:
        return launch_capture(backend, batch, pipelined)
    except torch.cuda.OutOfMemoryError:
        raise UserInputError(
            f"--batch-size {batch_size}: the verifier ran out of GPU memory on a batch of "
            f"{len(batch)} conversations of up to {max(map(len, batch))} tokens. Lower "
            "--batch-size (or --seq-length) and rerun the same command: the samples already "
            "written are kept and the run resumes."
        ) from None


def _write_error(writer: SampleWriter, output_dir: Path, error: OSError) -> UserInputError:
    where = writer.failed_path.name if writer.failed_path else "a sample file"
    return UserInputError(
        f"--output-dir {output_dir}: writing {where} failed ({describe(error)}). Every sample "
        "file already in the directory is complete (files are renamed into place only once "
        "written). Fix the cause (free space, permissions) and rerun the same command: it "
        "resumes with the missing samples."
    )
