"""A short seeded fuzz pass over the .apr, safetensors, GGUF and HF-directory readers (issue 10).

Mutated headers, names, offsets, dims, counts, config values and tokenizer files, each one loaded
the way the commands load a model (checked against its config, described, every tensor read, the
tokenizer built): every case must end in success or one `AprError` line (exit 2), never a
traceback, and no hostile name may write outside. ``scripts/fuzz_readers.py`` runs the long pass.
"""

import os
import random
import tempfile

import pytest

from apr_core.fuzzing import FORMATS, fuzz, mutated, seed_files
from helpers import one_error_line, run_apr

CASES = {"apr": 400, "safetensors": 400, "hf": 120, "gguf": 120}
SEED = 20251201


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return seed_files(tmp_path_factory.mktemp("fuzz-seeds"))


def _escapes() -> list[str]:
    places = ["/tmp/apr-fuzz-escape", os.path.join(tempfile.gettempdir(), "escape.txt"), "/tmp/escape.txt"]
    return [p for p in places if os.path.exists(p)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_end_in_success_or_one_line(tmp_path, seeds, fmt):
    assert _escapes() == []
    counts = fuzz(fmt, CASES[fmt], SEED, tmp_path, seeds)
    assert set(counts) <= {0, 2}, counts
    assert counts.get(2, 0) >= CASES[fmt] // 2, counts  # the mutations do reach the refusals
    assert counts.get(0, 0) > 0, counts  # and harmless ones still load
    assert _escapes() == []


def test_fuzzed_files_through_the_cli(tmp_path, seeds):
    rng = random.Random(SEED)
    codes = []
    for fmt in FORMATS:
        for i in range(2):
            path = mutated(fmt, rng, seeds[fmt], tmp_path / f"cli-{fmt}-{i}{'' if fmt == 'hf' else '.' + fmt}")
            proc = run_apr("inspect", str(path))
            assert "Traceback" not in proc.stderr, proc.stderr
            if proc.returncode:
                one_error_line(proc)
            codes.append(proc.returncode)
    assert set(codes) <= {0, 2} and 2 in codes
