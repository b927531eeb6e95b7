"""Atomic writes: a failure mid-write leaves the old file (or none) and no temporary litter."""

import pytest

from apr_core import pipeline
from apr_core.model import LazyTensor, TensorSpec
from apr_core.testing import tiny_model


def _failing_model():
    model = tiny_model("llama")
    name = model.names()[-1]
    spec = model.spec(name)

    def boom():
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-stream

    model.tensors[name] = LazyTensor(TensorSpec(name, spec.dtype, spec.shape), boom)
    return model


@pytest.mark.parametrize("fmt,name", [("apr", "m.apr"), ("safetensors", "m.safetensors"), ("hf", "hfdir"),
                                      ("gguf", "m.gguf")])
def test_interrupted_write_leaves_old_output_and_no_temp_files(tmp_path, fmt, name):
    dest = tmp_path / name
    pipeline.save(tiny_model("llama", seed=1), str(dest), fmt)
    before = sorted(p.name for p in tmp_path.iterdir())
    snapshot = dest.read_bytes() if dest.is_file() else (dest / "model.safetensors").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        pipeline.save(_failing_model(), str(dest), fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    after = dest.read_bytes() if dest.is_file() else (dest / "model.safetensors").read_bytes()
    assert after == snapshot


def test_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        pipeline.save(_failing_model(), str(tmp_path / "new.apr"))
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_an_error_not_success(tmp_path, monkeypatch):
    import os

    from apr_core.errors import AprError

    real_fsync = os.fsync

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(AprError, match="No space left"):
        pipeline.save(tiny_model("llama"), str(tmp_path / "m.apr"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []
