"""The hook specifications every apr plugin implements a subset of.

A plugin is any module or object with functions marked ``@apr_core.hookimpl``
whose names match the specs below; it is found through the ``apr`` entry-point
group. The pipeline behind every command is load -> transform -> evaluate ->
save, and there is one hook for each stage, plus the registration hooks that
declare techniques and add commands.

Transforms and evaluations are declared as `Technique` objects (see
`apr_core.technique`) through `apr_register_techniques`; the
`apr_transform` and `apr_evaluate` hooks then run them, so a plugin can wrap
or replace how any technique runs (on another device, remotely, with logging)
without touching the technique itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model
    from .technique import EvaluateTechnique, Kind, RunContext, Technique, TransformTechnique

hookspec = pluggy.HookspecMarker("apr")


@hookspec
def apr_register_techniques(register: Callable[["Technique | Kind"], None]) -> None:
    """Declare the techniques (and, rarely, new technique kinds) this plugin provides.

    Call ``register(obj)`` once per technique instance, e.g. ``register(Dare())``.
    ``obj`` is a `TransformTechnique` (merge, prune, quantize...), an
    `EvaluateTechnique` (perplexity, humaneval...) or a `Kind` that introduces a
    new CLI command family. Names must be unique within a kind; a duplicate
    raises `PluginError` naming both distributions.

    :param register: callback that records ``obj`` with the calling plugin's
        distribution name and version (shown by ``apr plugins``).
    :return: nothing; every implementation is called.
    """


@hookspec(firstresult=True)
def apr_load_model(source: str, options: dict[str, Any]) -> "Model | None":
    """Open the model at ``source`` and return a `Model` handle, or None if not yours.

    ``source`` is what the user typed: a path (``base.apr``, ``model.gguf``, a
    Hugging Face directory), a URL-like string (``hf://org/name@rev``) or a short
    name (``smollm2-135m``). Tensors must be loaded lazily (memory-mapped where
    the format allows) so that streaming commands never hold a whole model.

    :param source: the model reference as given on the command line.
    :param options: loader options: ``dtype`` (str or None), ``verify`` (bool:
        check whole-file checksums), ``revision`` and any format-specific keys.
    :return: a `Model`; the first non-None result wins. Raise `AprError` for a
        source you recognise but cannot read (corrupt, missing, offline).
    """


@hookspec(firstresult=True)
def apr_transform(
    technique: "TransformTechnique", inputs: "list[Model]", params: dict[str, Any], context: "RunContext"
) -> "Model | None":
    """Run a transform technique on its input models and return the new `Model`.

    The core's own implementation (registered last) calls
    ``technique.transform(inputs, params, context)``. A plugin may implement this
    hook to run techniques elsewhere or to decorate them; it returns None to
    let the next implementation run.

    :param technique: the registered technique chosen on the command line.
    :param inputs: loaded input models, in command-line order (the base model
        of a task-vector merge is in ``params['base_model']``).
    :param params: validated parameter values, defaults filled in.
    :param context: seed, device, progress and logging for this run.
    :return: the transformed `Model` (tensors may be lazy); first non-None wins.
    """


@hookspec(firstresult=True)
def apr_evaluate(
    technique: "EvaluateTechnique", model: "Model", params: dict[str, Any], context: "RunContext"
) -> "dict[str, Any] | None":
    """Evaluate ``model`` with an evaluate technique and return its result record.

    The core's implementation calls ``technique.evaluate(model, params, context)``.

    :param technique: the evaluate technique (``perplexity``, ``humaneval`` ...).
    :param model: the model to evaluate.
    :param params: validated parameter values.
    :param context: seed, device, progress and logging for this run.
    :return: a JSON-serialisable dict with at least ``metric`` and ``value``;
        first non-None wins.
    """


@hookspec(firstresult=True)
def apr_save_model(model: "Model", destination: str, fmt: str, options: dict[str, Any]) -> "str | None":
    """Write ``model`` to ``destination`` in format ``fmt`` and return the path written.

    Writers stream tensor by tensor and must be atomic: a temporary name,
    flushed and fsynced, renamed into place (directories staged and renamed), so
    an interrupted save leaves the old file or none.

    :param model: the model to write; its config, tokenizer, chat template,
        generation config and provenance must all be written.
    :param destination: the output path from ``-o``.
    :param fmt: ``apr``, ``safetensors``, ``gguf``, ``hf`` or a plugin's own format.
    :param options: writer options (``dtype`` for GGUF export, ...).
    :return: the path written; first non-None wins. Return None for formats
        you do not write.
    """


@hookspec
def apr_formats() -> "list[str]":
    """Name the output formats this plugin's `apr_save_model` writes.

    :return: a list of format names; all results are concatenated and offered
        as choices of ``--format``.
    """


@hookspec
def apr_register_commands(cli: Any) -> None:
    """Add whole commands that are not a technique of a kind (``apr tune``, ``apr data``).

    Technique commands (``apr merge`` ...) are generated from the registry; this hook is for
    commands with a shape of their own: a study that searches over techniques, a builder
    that writes datasets. Add them to the click group with ``@cli.command()``. Import heavy
    modules (torch) inside the command, never at module level, so ``apr --help`` stays fast.

    :param cli: the ``apr`` click group.
    :return: nothing; every implementation is called.
    """
