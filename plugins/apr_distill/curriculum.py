"""``progressive``: competence-based curriculum learning (Platanios et al. 2019), not layer matching.

Every training example gets a difficulty score:

- ``teacher-loss``: the teacher's mean cross-entropy (nats, T = 1) on the example's answer tokens
  (what the teacher itself finds hard to predict);
- ``nesting``: the code structure of the answer: the deepest indentation level (leading spaces / 4,
  a tab counting as one level) plus the deepest bracket nesting of ``()[]{}``;
- ``combined`` (default): the mean of the two scores' normalised ranks (0 = easiest, 1 = hardest).

The run's optimizer steps (``--epochs`` passes over the data, or ``--max-steps``) are spread evenly
over ``--stages`` stages. In stage s (0..S-1) the pool is the easiest fraction
c_s = sqrt(s / (S - 1) x (1 - c0^2) + c0^2) of the examples (Platanios et al.'s square-root
competence schedule sampled at the stage starts, c0 = ``--start-competence``), so the pool grows
from the easiest c0 in the first stage to everything in the last;
batches are drawn from a seeded permutation of the pool that depends only on (seed, stage, pass),
so the data position still follows from the step and ``--resume`` stays exact. Every batch is
full (a pass over the pool drops its remainder; the next pass's permutation differs).
"""

from __future__ import annotations

import math

from apr_core.runtime.trainer import Trainer, permutation


def nesting_depth(text: str) -> int:
    """Deepest indentation level plus deepest bracket nesting of ``text``."""
    indent = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        lead = line[: len(line) - len(line.lstrip())]
        indent = max(indent, lead.count("\t") + lead.count(" ") // 4)
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(0, depth - 1)
    return indent + deepest


def ranks(values: list[float]) -> list[float]:
    """Normalised ranks in [0, 1] (ties share the mean rank)."""
    n = len(values)
    order = sorted(range(n), key=lambda i: values[i])
    out = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            out[order[m]] = ((i + j) / 2) / max(n - 1, 1)
        i = j + 1
    return out


def difficulty(examples, teacher_losses: list[float] | None, tokenizer, kind: str) -> list[float]:
    """One score per example (higher = harder), see the module docstring."""
    nest = None
    if kind in ("nesting", "combined"):
        nest = [float(nesting_depth(tokenizer.decode([t for t, m in zip(e.ids, e.mask) if m]))) for e in examples]
    if kind == "nesting":
        return nest
    if kind == "teacher-loss":
        return list(teacher_losses)
    return [(a + b) / 2 for a, b in zip(ranks(teacher_losses), ranks(nest))]


def competence(stage: int, stages: int, c0: float) -> float:
    """The fraction of the data in stage ``stage`` (0-based) of ``stages``."""
    if stages == 1:
        return 1.0
    return min(1.0, math.sqrt(stage / (stages - 1) * (1 - c0 ** 2) + c0 ** 2))


class CurriculumTrainer(Trainer):
    """The shared trainer with batches drawn from a growing pool of the easiest examples."""

    def __init__(self, *args, order: list[int], stages: int, start: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.order, self.stages, self.start = order, stages, start
        self.total = None

    def plan_steps(self, world: int) -> tuple[int, int]:
        per_epoch, total = super().plan_steps(world)
        self.total = total
        return per_epoch, total

    def stage_of(self, step: int) -> int:
        return min(self.stages - 1, step * self.stages // max(self.total, 1))

    def pool(self, stage: int) -> list[int]:
        return self.order[: max(1, math.ceil(competence(stage, self.stages, self.start) * len(self.order)))]

    def global_batch(self, step: int, per_epoch: int, world: int) -> list:
        stage = self.stage_of(step)
        first = -(-stage * self.total // self.stages)  # the first step of this stage
        while first > 0 and self.stage_of(first - 1) == stage:
            first -= 1
        pool = self.pool(stage)
        per_step = self.s.batch_size * self.s.grad_accum * world
        per_pass = max(1, len(pool) // per_step)  # full batches only; a pass's leftovers wait for the next
        cycle, index = divmod(step - first, per_pass)
        perm = permutation(len(pool), self.s.seed, f"stage{stage}-pass{cycle}")
        return [self.train[pool[i]] for i in perm[index * per_step:(index + 1) * per_step]]

    def schedule(self) -> list[dict]:
        """Per stage: its steps and pool size (for the report)."""
        rows = []
        for s in range(self.stages):
            steps = [t for t in range(self.total) if self.stage_of(t) == s]
            rows.append({"stage": s + 1, "steps": len(steps), "pool": len(self.pool(s)),
                         "competence": round(competence(s, self.stages, self.start), 4)})
        return rows
