"""Is a loaded model consistent with itself? Checked once, when it is loaded, naming the bad field.

Readers check their container (offsets, sizes, names); this module checks what the container
holds, so a model that would only fail deep inside a transform or at ``apr eval`` is refused
up front with one line, before anything is written:

- `check_config`: the architecture fields of the config (and of ``text_config``) have the
  right JSON types and values: head counts, sizes and the vocabulary are positive integers,
  the query heads divide into key/value groups, the hidden size divides into heads where the
  family derives ``head_dim`` from it, epsilons and rope bases are finite numbers.
- `check_tokenizer`: the tokenizer files apr itself reads are UTF-8, the JSON ones JSON
  objects of the shape apr relies on.
- `check_tensors`: the tensors are exactly those of the transformers class the config names
  (built on the meta device, no weights allocated), with the shapes the config implies;
  tied output embeddings may be absent, buffers older checkpoints saved may be present, and a
  quantized tensor is compared by its logical shape. A model type transformers does not know
  cannot be checked this way and is left to its technique.

`check_model` runs all three; `pipeline.load` calls it for every model a command opens.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import AprError, CorruptFileError, first_line

POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "vocab_size", "max_position_embeddings", "head_dim")
# far above any real model, low enough that sizes derived from them (rotary tables, masks,
# the module count of a meta build) stay small: a config alone must not cost gigabytes
LIMITS = {"num_hidden_layers": 1 << 12, "max_position_embeddings": 1 << 27}
DEFAULT_LIMIT = 1 << 24
NON_NEGATIVE_NUMBERS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
POSITIVE_NUMBERS = ("rope_theta",)
JSON_OBJECTS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                "chat_template.json", "vocab.json")
TEXT_FILES = ("chat_template.jinja", "merges.txt", "vocab.txt")


def _bad(where: str, what: str) -> CorruptFileError:
    return CorruptFileError(f"{where}: {what}")


def _positive_int(v: Any) -> bool:
    return type(v) is int and v > 0


def check_config(config: Any, where: str) -> None:
    """Refuse a config whose architecture fields have the wrong type or an impossible value."""
    if not isinstance(config, dict):
        raise _bad(where, f"the model config is {json_type(config)}, not an object")
    _check_level(config, where, "config")
    text = config.get("text_config")
    if text is not None:
        if not isinstance(text, dict):
            raise _bad(where, "config text_config is not a JSON object")
        _check_level(text, where, "config text_config")


def _check_level(cfg: dict[str, Any], where: str, prefix: str) -> None:
    kind = cfg.get("model_type")
    if kind is not None and not (isinstance(kind, str) and kind):
        raise _bad(where, f"{prefix} model_type = {_short(kind)} is not a name")
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise _bad(where, f"{prefix} architectures = {_short(archs)} is not a list of class names")
    for key in POSITIVE_INTS:
        v = cfg.get(key)
        if v is None:
            continue
        items = v if isinstance(v, list) and v else [v]  # a few families give per-layer lists
        if not all(_positive_int(x) for x in items):
            raise _bad(where, f"{prefix} {key} = {_short(v)} is not a positive integer")
        limit = LIMITS.get(key, DEFAULT_LIMIT)
        if max(items) > limit:
            raise _bad(where, f"{prefix} {key} = {_short(v)} is implausibly large (over {limit})")
    for keys, ok, what in ((NON_NEGATIVE_NUMBERS, lambda x: x >= 0, "a finite number >= 0"),
                           (POSITIVE_NUMBERS, lambda x: x > 0, "a finite number > 0")):
        for key in keys:
            v = cfg.get(key)
            if v is None:
                continue
            if type(v) not in (int, float) or not math.isfinite(v) or not ok(v):
                raise _bad(where, f"{prefix} {key} = {_short(v)} is not {what}")
    tie = cfg.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise _bad(where, f"{prefix} tie_word_embeddings = {_short(tie)} is not true or false")
    heads, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if type(heads) is int and type(kv) is int and heads % kv:
        raise _bad(where, f"{prefix} num_attention_heads = {heads} is not a multiple of "
                          f"num_key_value_heads = {kv}")
    hidden = cfg.get("hidden_size")
    if cfg.get("head_dim") is None and type(hidden) is int and type(heads) is int and hidden % heads:
        raise _bad(where, f"{prefix} hidden_size = {hidden} is not a multiple of num_attention_heads = "
                          f"{heads} (and no head_dim is given)")


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message: an object, a list, a string ..."""
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_tokenizer(files: dict[str, bytes], where: str) -> None:
    """Refuse tokenizer files apr reads itself that are not UTF-8, not JSON, or of the wrong shape.

    Files that passed once are remembered by their sha256 (`apr_core.memo`): parsing and walking
    a 3.5 MB tokenizer.json takes 80 ms of every command, hashing it 2 ms. Failures are never
    stored, so bad bytes are refused with their message each time."""
    import hashlib

    from .memo import memoized

    digests = {name: hashlib.sha256(files[name]).hexdigest() for name in JSON_OBJECTS + TEXT_FILES if name in files}
    memoized(TOKENIZER_CHECKED, {"files": digests, "checks": TOKENIZER_CHECKS},
             lambda: _check_tokenizer_files(files, where) or True, valid=lambda value: value is True)


TOKENIZER_CHECKED = "tokenizer-checked"
TOKENIZER_CHECKS = 1  # bump when the tokenizer checks change, so remembered passes are checked again


def _check_tokenizer_files(files: dict[str, bytes], where: str) -> None:
    for name in JSON_OBJECTS + TEXT_FILES:
        if name not in files:
            continue
        try:
            text = files[name].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(where, f"tokenizer file {name} is not UTF-8") from None
        if name in TEXT_FILES:
            continue
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise _bad(where, f"tokenizer file {name} is not valid JSON") from None
        if not isinstance(data, dict):
            raise _bad(where, f"tokenizer file {name} is {json_type(data)}, not an object")
        if name == "tokenizer.json":
            _check_tokenizer_json(data, where)


def _check_tokenizer_json(tok: dict[str, Any], where: str) -> None:
    model = tok.get("model")
    if model is not None and not isinstance(model, dict):
        raise _bad(where, "tokenizer.json: model is not an object")
    model = model or {}
    vocab = model.get("vocab")
    added = tok.get("added_tokens")
    if added is not None and not (isinstance(added, list) and all(
            isinstance(a, dict) and type(a.get("id")) is int and isinstance(a.get("content"), str)
            for a in added)):
        raise _bad(where, "tokenizer.json: added_tokens is not a list of {id, content} objects")
    # ids index arrays apr builds (the Rust tool's vocabulary list): dense, so bounded by the file
    limit = 2 * (len(vocab or ()) + len(added or ())) + 1024
    if added and not all(0 <= a["id"] < limit for a in added):
        raise _bad(where, "tokenizer.json: an added token has an id far outside the vocabulary")
    if isinstance(vocab, dict):
        if not all(type(i) is int and 0 <= i < limit for i in vocab.values()):
            raise _bad(where, "tokenizer.json: model.vocab maps a token to something other than an id "
                              "of the vocabulary")
    elif isinstance(vocab, list):
        if not all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                   and type(v[1]) in (int, float) for v in vocab):
            raise _bad(where, "tokenizer.json: model.vocab is not a list of [piece, score] pairs")
    elif vocab is not None:
        raise _bad(where, "tokenizer.json: model.vocab is neither an object nor a list")
    merges = model.get("merges")
    if merges is not None and not (isinstance(merges, list) and all(
            isinstance(m, str) or (isinstance(m, list) and all(isinstance(x, str) for x in m)) for m in merges)):
        raise _bad(where, "tokenizer.json: model.merges is not a list of merges")


CLASS_TENSORS, CLASS_TENSORS_LIBRARIES = "class-tensors", ("transformers", "torch")


def known_tensor_names(config: dict) -> list[str] | None:
    """The tensor names of the config's transformers class if a check already stored them (no import)."""
    from .memo import recall

    info = recall(CLASS_TENSORS, config, CLASS_TENSORS_LIBRARIES, _valid_class_tensors)
    return list(info["expected"]) if info else None


def _class_tensors(config: dict, where: str) -> dict | None:
    """The tensors of the config's transformers class: {"class", "expected" {name: shape},
    "optional" (tied), "buffers"}; None when transformers has no class for the config."""
    from .torch_bridge import causal_lm_class, meta_model

    try:
        cls = causal_lm_class(config)
    except AprError:
        return None  # transformers has no class for it: nothing to check the tensors against
    except Exception as exc:  # transformers' config classes validate values with many error types
        raise _bad(where, f"the config is not valid for transformers: {first_line(exc)}") from None
    try:
        module = meta_model(config, buffers=False)
    except AprError as exc:
        raise _bad(where, str(exc)) from None
    except Exception as exc:  # the same for the module constructors
        raise _bad(where, f"the config does not describe a valid {cls.__name__}: {first_line(exc)}") from None
    return {"class": cls.__name__,
            "expected": {n: list(t.shape) for n, t in module.state_dict().items()},
            "optional": sorted(getattr(module, "all_tied_weights_keys", None) or {}),
            "buffers": sorted(n for n, _ in module.named_buffers())}


def _valid_class_tensors(value) -> bool:
    return value is None or (isinstance(value, dict) and isinstance(value.get("class"), str)
                             and isinstance(value.get("expected"), dict)
                             and all(isinstance(s, list) for s in value["expected"].values())
                             and isinstance(value.get("optional"), list) and isinstance(value.get("buffers"), list))


def check_tensors(model, where: str) -> None:
    """Refuse tensors that are missing from, foreign to, or shaped unlike the config's architecture.

    The class's tensor names and shapes depend only on the config and the transformers version,
    and building them imports transformers' modeling code (seconds, more than many commands'
    work), so they are memoized on disk (apr_core.memo); a config that fails is never stored."""
    from .memo import memoized

    info = memoized(CLASS_TENSORS, model.config, lambda: _class_tensors(model.config, where),
                    libraries=CLASS_TENSORS_LIBRARIES, valid=_valid_class_tensors)
    if info is None:
        return
    cls_name = info["class"]
    expected = {n: tuple(s) for n, s in info["expected"].items()}
    optional = set(info["optional"])
    buffers = set(info["buffers"])
    missing = [n for n in expected if n not in model.tensors and n not in optional]
    if missing:
        raise _bad(where, f"model has no tensor {missing[0]} ({len(missing)} missing) for {cls_name}")
    extra = sorted(n for n in model.tensors if n not in expected and n not in buffers)
    if extra:
        raise _bad(where, f"tensor {extra[0]} is not part of {cls_name} ({len(extra)} such); the "
                          f"config's model_type or layer count does not match the tensors")
    for name in sorted(set(expected) & set(model.tensors)):
        shape = tuple(model.tensors[name].spec.shape)
        if shape != expected[name]:
            cfg = model.text_config()
            sizes = ", ".join(f"{k}={cfg[k]}" for k in POSITIVE_INTS if k in cfg and k != "max_position_embeddings")
            raise _bad(where, f"tensor {name} has shape {list(shape)}, but the config ({sizes}) makes it "
                              f"{list(expected[name])}")


def check_model(model, where: str | None = None, tensors: bool = True) -> None:
    """`check_config`, `check_tokenizer`, and (unless ``tensors`` is False) `check_tensors`."""
    where = where or str(model.source)
    check_config(model.config, where)
    if model.generation_config is not None and not isinstance(model.generation_config, dict):
        raise _bad(where, "the generation config is not a JSON object")
    if not isinstance(model.provenance, list) or not all(isinstance(r, dict) for r in model.provenance):
        raise _bad(where, "the provenance is not a list of records")
    check_tokenizer(model.tokenizer, where)
    if tensors:
        check_tensors(model, where)
