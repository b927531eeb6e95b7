"""The optuna study behind ``apr tune``: storage, sampler, pruner, and the trial loop.

Storage is optuna's journal file in the output directory by default (append-only, so a
``kill -9`` loses at most the trial that was running: on the next run that trial, left
RUNNING by a dead process of this host, is marked failed and its parameters queued again), or
any database URL (``postgresql://...``): then any number of workers on any machines share one
study, each sending a heartbeat, and a worker that stops beating has its trial failed and
retried by whoever runs next (optuna's heartbeat and `RetryHeartbeatStaleTrialCallback`).

The loop starts a trial only while fewer than ``budget`` trials are finished or running and
the time limit has not passed; trials report the held-out loss at each evaluation and the
pruner (ASHA, Hyperband, median) may stop them there (`optuna.TrialPruned`), after which their
memory is released before the next one starts.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

from apr_core.atomic import process_alive
from apr_core.errors import AprError

SAMPLERS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "hyperband", "median", "none")
JOURNAL = "study.journal"
#: a shared study's workers beat every HEARTBEAT seconds; a trial silent for GRACE is failed and
#: retried (APR_TUNE_HEARTBEAT / APR_TUNE_GRACE override them, e.g. for tests)
HEARTBEAT_SECONDS = int(os.environ.get("APR_TUNE_HEARTBEAT", "10"))
GRACE_SECONDS = int(os.environ.get("APR_TUNE_GRACE", "30"))


def parse_duration(text: str | None) -> float | None:
    """Seconds in ``8h``, ``30m``, ``1h30m``, ``90s`` or a bare number of seconds."""
    if text is None:
        return None
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return float(raw)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise AprError(f"--time-limit {text!r}: use e.g. 8h, 30m, 1h30m or 90s")
    unit = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(float(n) * unit[u] for n, u in parts)


def storage(url: str | None, directory: Path):
    """The study's storage: a database URL, or the journal file in ``directory``."""
    import optuna

    if url:
        if url.startswith(("postgresql", "mysql", "sqlite")):
            try:
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                    engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
            except ModuleNotFoundError as exc:
                raise AprError(f"--storage {url.split(':', 1)[0]} needs the {exc.name} package "
                               f"(pip install 'apr[tune]')") from None
            except Exception as exc:  # unreachable server, bad credentials: one line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise AprError(f"--storage: cannot open {_redact(url)}: {first}") from None
        if url.endswith(".journal") or url.startswith("journal:"):
            return _journal(Path(url.removeprefix("journal:")))
        raise AprError(f"--storage {url!r}: give postgresql://..., mysql://..., sqlite:///FILE or FILE.journal")
    directory.mkdir(parents=True, exist_ok=True)
    return _journal(directory / JOURNAL)


def _journal(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def sampler_seed(seed: int, shared: bool) -> int:
    """The sampler's seed: ``seed`` for a study of one worker (reproducible); on shared storage
    mixed with the worker's id, or every worker would draw the same random start-up points."""
    if not shared:
        return seed
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{worker_id()}".encode()).digest()[:4], "little")


def sampler(name: str, seed: int, budget: int, shared: bool, grid_space: Callable[[], dict] | None = None):
    """``tpe``: multivariate TPE (constant liar when workers share the study, so parallel trials
    do not all sample the same point); ``random``; ``grid``."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=shared,
                                          n_startup_trials=max(3, min(10, budget // 4)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(), seed=seed)
    raise AprError(f"--strategy {name!r} is not one of {', '.join(SAMPLERS)}")


def pruner(name: str, min_resource: int, max_resource: int):
    """``asha``: asynchronous successive halving (rungs at min_resource x 3^k steps); ``hyperband``:
    brackets of it; ``median``: stop below the median of earlier trials at the same step."""
    import optuna

    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, min_resource), reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, min_resource),
                                              max_resource=max(max_resource, min_resource + 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(0, min_resource - 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise AprError(f"--scheduler {name!r} is not one of {', '.join(SCHEDULERS)}")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"



#: a live worker names itself on its trial at once; a RUNNING trial still unnamed after this long
#: was created by a process killed in that instant
UNNAMED_SECONDS = 30


def recover_orphans(study, log: Callable[[str], None], trial_dir: Callable[[int], str]) -> int:
    """Fail the RUNNING trials whose worker process on this host is gone (killed), and queue
    their parameters again (resuming from their last checkpoint), so a killed run's study
    continues where it stopped."""
    import datetime

    from optuna.trial import TrialState

    host, n = socket.gethostname(), 0
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("worker", ""))
        name, _, pid = owner.rpartition(":")
        if not owner:
            if t.datetime_start is None or (now - t.datetime_start).total_seconds() < UNNAMED_SECONDS:
                continue
            owner = "a process killed as the trial began"
        elif name != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        # optuna has no public call to fail another process's trial; the storage API is what its own
        # heartbeat check (fail_stale_trials) uses
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "resume_from": trial_dir(t.number)},
                            skip_if_exists=False)
        log(f"trial {t.number}: its worker ({owner}) is gone; marked failed and queued again")
        n += 1
    return n


def requeue_stopped(study, log: Callable[[str], None], trial_dir: Callable[[int], str]) -> int:
    """Queue again (once) the trials an earlier run's --time-limit stopped, to resume from their
    checkpoints."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    n = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("stopped") == "time-limit" and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "resume_from": trial_dir(t.number)},
                                skip_if_exists=False)
            log(f"trial {t.number}: stopped by the last run's --time-limit; queued to continue")
            n += 1
    return n


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


class Deadline:
    """``--time-limit``: no trial starts after it; a running trial stops at its next evaluation."""

    def __init__(self, seconds: float | None) -> None:
        self.end = time.time() + seconds if seconds else None

    def passed(self) -> bool:
        return self.end is not None and time.time() >= self.end


class TimeUp(Exception):
    """Raised inside a trial at an evaluation after the time limit."""


class TrialFailed(Exception):
    """A trial whose configuration cannot run (out of memory): recorded as failed, the study goes on."""


def loop(study, run_trial: Callable, budget: int, deadline: Deadline, log: Callable[[str], None],
         callbacks: list | None = None, recover: Callable[[], Any] | None = None) -> str:
    """Run trials until ``budget`` are finished (complete or pruned), the deadline passes, or a
    grid is exhausted. Returns why it stopped."""
    import optuna
    from optuna.trial import TrialState

    failed_here = 0
    while True:
        c = counts(study)
        finished = c["complete"] + c["pruned"]
        if finished >= budget:
            return "budget"
        if finished + c["running"] >= budget and c["waiting"] == 0:
            time.sleep(1.0)  # other workers hold the last trials: wait for them (or their heartbeat)
            optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats (the journal)
            if recover is not None:
                recover()  # the journal: trials of processes that died since
            continue
        if deadline.passed():
            return "time-limit"
        if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study) \
                and c["waiting"] == 0:
            return "grid-exhausted"
        study.optimize(run_trial, n_trials=1, catch=(TimeUp, TrialFailed), gc_after_trial=True, callbacks=callbacks)
        last = study.get_trials(deepcopy=False)[-1] if study.get_trials(deepcopy=False) else None
        if last is not None and last.state == TrialState.FAIL and last.user_attrs.get("stopped") == "time-limit":
            return "time-limit"
        if last is not None and last.state == TrialState.FAIL and "error" in last.user_attrs:
            failed_here += 1
            if failed_here >= max(3, budget):
                raise AprError(f"{failed_here} trials ran out of memory ({last.user_attrs['error']}); lower "
                               f"--set batch_size or max_seq_len, or narrow the space with --space")
        _release()


def _release() -> None:
    """Give a finished or pruned trial's memory back before the next starts."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def ranked(study) -> list:
    """Completed trials, best first."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return sorted(done, key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)


def promising(study) -> list:
    """Completed trials best first, then pruned ones by the last value they reported: what a scout
    hands on (its best configurations, and the trials its narrowed space spans)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.value is not None]
    pruned.sort(key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)
    return ranked(study) + pruned


def importances(study) -> dict[str, float]:
    """fANOVA importance of each parameter over the completed trials ({} with too few)."""
    import optuna

    if len(ranked(study)) < 2:
        return {}
    try:
        return {k: round(float(v), 6) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # one distinct value per parameter, or too few trials
        return {}


def existing(storage_, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.study.get_all_study_summaries(storage_, include_best_trial=False))


def open_study(storage_, name: str, direction: str, sampler_, pruner_) -> Any:
    """Create the study, or load it when it exists (then its direction must agree)."""
    import optuna

    study = optuna.create_study(storage=storage_, study_name=name, direction=direction, sampler=sampler_,
                                pruner=pruner_, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise AprError(f"study {name!r} already exists and {study.direction.name.lower()}s; this run would "
                       f"{direction} (use another --study-name or output directory)")
    return study
