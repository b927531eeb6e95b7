"""What a technique is: a named, parameterised transform or evaluation of models.

Plugins subclass `TransformTechnique` or `EvaluateTechnique`, declare their
parameters as `Param`s and register an instance through the
``apr_register_techniques`` hook. `Kind` describes a command family
(``apr merge``, ``apr prune`` ...): which option selects the technique, how
many models it takes, the options every member shares. A family's plugin
registers its Kind once; the core declares only `EVALUATE`, the evaluate stage
of the pipeline.

Every optional attribute a technique may set is declared here, with its
default, so the core never guesses with ``getattr``.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from .params import Param, resolve

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    """A family of techniques that share one CLI command.

    :param name: the family's name, which techniques name as their ``kind`` (``merge``).
    :param selector: option that picks the technique (``strategy`` -> ``--strategy``).
    :param help: the command's help text.
    :param min_inputs: fewest positional model arguments (a technique may narrow it).
    :param max_inputs: most positional model arguments (None: unlimited).
    :param default: technique used when the selector is omitted (None: required).
    :param options: parameters common to every technique of the kind; their
        values are validated and passed to the technique with its own params.
    :param actions: extra modes that write nothing, each a CLI flag
        (``--analyze``) that runs the technique method of that name with
        ``(inputs, params, context)`` and prints the report it returns; a
        technique lists the ones it implements in `Technique.actions`.
    :param batch: offer ``--batch A,B,C``: apply several techniques of the kind to
        one input, one output each in a directory, then print a comparison
        table (see `pipeline.batch` and `TransformTechnique.compare`).
    :param batch_options: options that only ``--batch``'s comparison uses (they
        are handed to ``compare``, never recorded as technique parameters).
    :param command: the CLI command name when it differs from ``name`` (``eval``).
    :param writes: whether the command writes a model (``-o``, ``--format``, ``--plan``).
    :param processes: offer ``--nproc N``: run the command as N processes under torchrun
        (training kinds, whose techniques use accelerate).
    """

    name: str
    selector: str
    help: str = ""
    min_inputs: int = 1
    max_inputs: int | None = 1
    default: str | None = None
    options: tuple[Param, ...] = ()
    actions: tuple[str, ...] = ()
    batch: bool = False
    batch_options: tuple[Param, ...] = ()
    command: str = ""
    writes: bool = True
    processes: bool = False

    @property
    def command_name(self) -> str:
        return self.command or self.name


THRESHOLD = Param("threshold", "float", None,
                  "Exit 1 when the metric is worse than this (above it for lower-is-better metrics such as "
                  "perplexity)")
EVALUATE = Kind("evaluate", "task", "Evaluate MODEL: perplexity on a corpus, or a task from an evaluate plugin.",
                1, 1, default="perplexity", options=(THRESHOLD,), command="eval", writes=False)


@dataclass
class RunContext:
    """Per-run settings handed to techniques: seed, device, dtype, output, resume, logging, progress.

    ``device`` is a resolved torch device string (``cpu``, ``cuda:0``; see
    `apr_core.runtime.device`); ``dtype`` the requested compute precision
    (``auto``, ``float32``, ``bfloat16``, ``float16``), resolved per device by
    `compute_dtype`. Long-running techniques (training, tuning) own
    ``output`` and keep checkpoints under ``workdir``; ``resume`` continues
    from the last complete checkpoint, ``save_steps`` sets how often one is
    written.

    ``report`` is where a technique puts what the user should see about the
    run (achieved sparsity, bits per weight, vocabulary notes); the CLI prints
    it and includes it in ``--json``. ``record`` holds facts about the result
    that belong in the output's provenance (a dataset hash, steps, final loss);
    it must be deterministic (no timings). ``extra_inputs`` holds models a technique
    loads itself (a merge's ``--base-model``); `pipeline.transform` records
    them in provenance, with their hashes, after the positional inputs.
    ``output_format`` is the format the result will be written in (``hf``,
    ``apr`` ...), when known, so a technique can check and describe what is written.
    ``on_eval`` is called by training loops with ``(step, held_out_loss, epoch)`` after each
    intermediate evaluation (every ``eval_steps`` and at each epoch's end); a hyperparameter
    search reports it to its pruner and may raise to stop the run there.
    """

    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"
    quiet: bool = False
    verbose: bool = False
    output: str | None = None
    output_format: str | None = None
    workdir: Path | None = None
    resume: bool = False
    save_steps: int | None = None
    report: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    extra_inputs: list[Any] = field(default_factory=list)
    on_eval: Callable[[int, float, float], None] | None = None

    def log(self, message: str) -> None:
        """A human-readable progress line on stderr (never stdout, which carries --json)."""
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def progress(self, items: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
        """Wrap ``items`` in a progress bar on stderr, silent when quiet or not a TTY."""
        from .progress import progress

        return progress(items, desc=desc, total=total, quiet=self.quiet)

    def compute_dtype(self, requested: str | None = None, model=None) -> str:
        """The torch dtype name to compute in: ``requested`` (or the run's ``dtype``) with
        ``auto`` resolved for this run's device (and, for inference, the ``model``'s stored type)."""
        from .runtime.device import resolve_dtype

        return resolve_dtype(requested or self.dtype, self.device, model)

    def quieter(self) -> "RunContext":
        """The same settings with progress and logging off (for nested runs)."""
        return RunContext(seed=self.seed, device=self.device, dtype=self.dtype, quiet=True)


class Technique(ABC):
    """Base of every registered technique. Subclasses set the class attributes they need."""

    #: unique within its kind; what the kind's selector names (``ties``)
    name: str = ""
    #: the `Kind` name this technique belongs to (``merge``)
    kind: str = ""
    #: one line for ``--help`` and ``apr plugins``
    summary: str = ""
    #: the paper or tool the method follows, cited in the docs
    paper: str = ""
    #: the technique's own parameters; CLI options, validation and docs come from them
    params: tuple[Param, ...] = ()
    #: True if the output depends on ``--seed`` (then the seed is recorded and honoured)
    random: bool = False
    #: fewest / most input models, when narrower than the kind's (None: the kind's)
    min_inputs: int | None = None
    max_inputs: int | None = None
    #: the kind's report-only actions this technique implements, each a method of that name
    #: taking ``(inputs, params, context)`` and returning a JSON-serialisable report
    actions: tuple[str, ...] = ()
    #: how a user selects the technique when not through its kind's selector option
    #: (prompt strategies: ``apr eval --prompt-strategy``); used by the generated docs
    usage: str = ""
    #: contract-suite expectations: the output may change tensor shapes / dtypes, and these
    #: config keys may change (everything else in the config must survive)
    changes_shapes: bool = False
    changes_dtypes: bool = False
    config_changes: tuple[str, ...] = ()

    def resolve_params(self, raw: dict[str, Any], shared: tuple[Param, ...] = ()) -> dict[str, Any]:
        """Validate user values against the declared params (plus the kind's ``shared`` ones),
        fill defaults, then `check`."""
        values = resolve(self.params + shared, raw, f"{self.kind} {self.name}")
        self.check(values)
        return values

    def check(self, params: dict[str, Any]) -> None:
        """Cross-field validation; raise `AprError` with one clear line."""

    def input_range(self, kind: Kind) -> tuple[int, int | None]:
        """(fewest, most) input models: this technique's bounds, else its kind's."""
        lo = self.min_inputs if self.min_inputs is not None else kind.min_inputs
        hi = self.max_inputs if self.max_inputs is not None else kind.max_inputs
        return lo, hi

    def contract_params(self, workdir: Path, inputs: list[str]) -> dict[str, Any]:
        """Raw parameter values for the shared contract suite (`apr_core.testing`) on tiny
        models: calibration files, a base model ... written under ``workdir``."""
        return {}

    def contract(self, workdir: Path) -> dict[str, Any] | None:
        """The contract of a technique that neither transforms nor evaluates models (a prompt
        strategy): run its own checks, raise AssertionError on a breach, return a summary.
        None means the technique has no contract of its own."""
        return None


class TransformTechnique(Technique):
    """A technique that turns input models into a new model (merge, prune, quantize...)."""

    def plan(self, inputs: "list[Model]", params: dict[str, Any], context: RunContext) -> dict[str, Any]:
        """What `transform` would do, without doing it: sizes, memory, time estimates."""
        from .model import plan_summary

        return plan_summary(self, inputs, params)

    @abstractmethod
    def transform(self, inputs: "list[Model]", params: dict[str, Any], context: RunContext) -> "Model":
        """Return the new model; tensors may be lazy so the writer can stream them."""

    def default_format(self, destination: str) -> str | None:
        """The output format when ``--format`` is not given, if the technique's outputs differ from
        the general rule (extension, a directory meaning ``hf``): a fine-tune writes an adapter
        directory. None keeps the general rule."""
        return None

    def compare(self, source: str, rows: list[dict[str, Any]], options: dict[str, Any],
                context: RunContext) -> dict[str, Any]:
        """``--batch``'s extra report: called with the batch rows (technique, output, bytes,
        seconds) and the kind's ``batch_options``; may add columns to ``rows``."""
        return {}


class EvaluateTechnique(Technique):
    """A technique that measures a model and returns a result record."""

    kind = "evaluate"

    @abstractmethod
    def evaluate(self, model: "Model", params: dict[str, Any], context: RunContext) -> dict[str, Any]:
        """Return a JSON-serialisable record with at least ``metric`` and ``value``
        (and ``higher_is_better`` when higher is better)."""
