"""What a technique is: a named, parameterised transform or evaluation of models.

Plugins subclass `TransformTechnique` or `EvaluateTechnique`, declare their
parameters as `Param`s and register an instance through the
``apr_register_techniques`` hook. `Kind` describes a command family
(``apr merge``, ``apr prune`` ...) and which option selects the technique.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeVar

from .params import Param, resolve

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    """A family of transform techniques that share one CLI command.

    :param name: command name (``merge``).
    :param selector: option that picks the technique (``strategy`` -> ``--strategy``).
    :param min_inputs: fewest positional model arguments.
    :param max_inputs: most positional model arguments (None: unlimited).
    :param default: technique used when the selector is omitted (None: required).
    :param options: parameters common to every technique of the kind; their
        values are validated and passed to the technique with its own params.
    :param actions: extra modes that write nothing, each a CLI flag
        (``--analyze``) that calls the technique method of that name with
        ``(inputs, params, context)`` and prints the report it returns.
    :param batch: offer ``--batch A,B,C``: apply several techniques of the kind to
        one input, one output each in a directory, then print a comparison
        table (see `pipeline.batch`). A technique may add columns to it with a
        ``compare(inputs, rows, options, context)`` method.
    :param batch_options: options that only ``--batch``'s comparison uses (they
        are handed to ``compare``, never recorded as technique parameters).
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


@dataclass
class RunContext:
    """Per-run settings handed to techniques: seed, device, logging and progress.

    ``report`` is where a technique puts what the user should see about the
    run (achieved sparsity, bits per weight, vocabulary notes); the CLI prints
    it and includes it in ``--json``.

    ``extra_inputs`` holds models a technique loads itself (a merge's
    ``--base-model``); `pipeline.transform` records them in provenance, with
    their hashes, after the positional inputs.

    ``output_format`` is the format the result will be written in (``hf``,
    ``apr`` ...), when known, so a report can describe what is written.
    """

    seed: int = 0
    device: str = "cpu"
    quiet: bool = False
    verbose: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    extra_inputs: list[Any] = field(default_factory=list)
    output_format: str | None = None

    def log(self, message: str) -> None:
        """A human-readable progress line on stderr (never stdout, which carries --json)."""
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def progress(self, items: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
        """Wrap ``items`` in a progress bar on stderr, silent when quiet or not a TTY."""
        from .progress import progress

        return progress(items, desc=desc, total=total, quiet=self.quiet)


class Technique(ABC):
    """Base of every registered technique. Subclasses set the class attributes."""

    name: str = ""
    kind: str = ""
    summary: str = ""
    paper: str = ""
    params: tuple[Param, ...] = ()
    #: True if the output depends on ``--seed`` (then the seed is recorded and honoured)
    random: bool = False

    def resolve_params(self, raw: dict[str, Any], shared: tuple[Param, ...] = ()) -> dict[str, Any]:
        """Validate user values against the declared params (plus the kind's ``shared`` ones),
        fill defaults, then `check`."""
        values = resolve(self.params + shared, raw, f"{self.kind} {self.name}")
        self.check(values)
        return values

    def check(self, params: dict[str, Any]) -> None:
        """Cross-field validation; raise `AprError` with one clear line."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "summary": self.summary,
            "paper": self.paper,
            "params": [
                {"name": p.name, "flag": p.cli_flag, "type": p.type, "default": p.default,
                 "range": p.range_text() or None, "choices": list(p.choices) or None, "help": p.help}
                for p in self.params
            ],
        }


class TransformTechnique(Technique):
    """A technique that turns input models into a new model (merge, prune, quantize...)."""

    def plan(self, inputs: "list[Model]", params: dict[str, Any], context: RunContext) -> dict[str, Any]:
        """What `transform` would do, without doing it: sizes, memory, time estimates."""
        from .model import plan_summary

        return plan_summary(self, inputs, params)

    @abstractmethod
    def transform(self, inputs: "list[Model]", params: dict[str, Any], context: RunContext) -> "Model":
        """Return the new model; tensors may be lazy so the writer can stream them."""


class EvaluateTechnique(Technique):
    """A technique that measures a model and returns a result record."""

    kind = "evaluate"

    @abstractmethod
    def evaluate(self, model: "Model", params: dict[str, Any], context: RunContext) -> dict[str, Any]:
        """Return a JSON-serialisable record with at least ``metric`` and ``value``."""
