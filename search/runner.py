"""The search loop: an Optuna study over pipelines, under a measured compute budget.

One trial = sample choices from the space -> build and validate a pipeline config ->
estimate its cost (skip it, infeasible, if clearly over budget) -> evaluate it on growing
subsets of the dev questions (report intermediate accuracy; the pruner may stop it) ->
record accuracy and measured cost per query. Feasibility is an Optuna constraint
(``trial.set_constraint``: ``measured / budget - 1 <= 0``), which TPE, GP, NSGA-II and
``study.best_trial(s)`` all read; the objective value stays the real accuracy.

Costs are the pipeline's price *without* reuse (real usage + what the call cache saved),
so a trial that happens to be cached is not mistaken for a cheap one. What was really
spent (``new_tokens``) and what reuse saved (``saved_tokens``) are recorded per trial.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import statistics
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from archon.backends.types import Usage
from archon.config import build_graph, parse_config
from archon.errors import ConfigError

from .build import InvalidPipeline, OptunaSuggester, build_config, describe
from .cost import estimate_cost
from .evaluation import EvaluateFn, SearchItem
from .space import SearchSpace

SAMPLERS = ("tpe", "random", "gp", "nsga2", "cmaes", "grid")
PRUNERS = ("median", "halving", "hyperband", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Budgets:
    """Per-query limits; any left ``None`` is not enforced."""

    tokens: float | None = None
    calls: float | None = None
    flops: float | None = None

    def is_set(self) -> bool:
        return any(v is not None for v in (self.tokens, self.calls, self.flops))

    def limits(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


@dataclass
class SearchSettings:
    trials: int = 20  # the study's target total of finished (complete + pruned) trials
    budget: Budgets = field(default_factory=Budgets)
    multi_objective: bool = False
    sampler: str = "tpe"
    pruner: str = "median"
    rungs: tuple[float, ...] = (0.25, 0.5, 1.0)
    seed: int = 0
    study_name: str = "archon-search"
    storage: str | None = None  # an RDB URL (sqlite:///..., postgresql://...); None keeps it in memory
    skip_margin: float = 0.25
    timeout_s: float | None = None
    n_startup_trials: int | None = None
    heartbeat_s: float = 10.0  # RDB storage: heartbeat period; 3x this without one marks a dead worker


@dataclass
class Measured:
    """What a trial's evaluation cost and scored, accumulated over fidelity rungs."""

    scores: list[float] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    saved: Usage = field(default_factory=Usage)
    errors: int = 0

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def accuracy(self) -> float:
        return sum(self.scores) / self.n if self.n else 0.0

    def per_query(self) -> dict[str, float]:
        n = max(1, self.n)
        full = self.usage + self.saved
        return {
            "tokens": full.total_tokens / n,
            "prompt_tokens": full.prompt_tokens / n,
            "cached_prompt_tokens": self.usage.cached_prompt_tokens / n,
            "completion_tokens": full.completion_tokens / n,
            "calls": full.calls / n,
            "flops": full.flops / n,
        }


class Reporter(Protocol):
    """Progress hooks (the CLI draws them with rich)."""

    def trial_started(self, number: int) -> None: ...

    def trial_rung(self, number: int, n_done: int, accuracy: float) -> None: ...

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None: ...


class _Quiet:
    def trial_started(self, number: int) -> None:
        pass

    def trial_rung(self, number: int, n_done: int, accuracy: float) -> None:
        pass

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        pass


# -- samplers, pruners, storage ----------------------------------------------------------

def make_sampler(name: str, *, seed: int, multi_objective: bool, trials: int,
                 n_startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(name, seed=seed, multi_objective=multi_objective, trials=trials,
                             n_startup_trials=n_startup_trials)


def _make_sampler(name: str, *, seed: int, multi_objective: bool, trials: int,
                  n_startup_trials: int | None) -> optuna.samplers.BaseSampler:
    startup = n_startup_trials if n_startup_trials is not None else max(2, min(10, trials // 4))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                          group=not multi_objective, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.BruteForceSampler(seed=seed)
    if name == "gp":
        missing = [m for m in ("torch", "scipy") if not _importable(m)]
        if missing:
            raise ConfigError(f"--sampler gp needs {' and '.join(missing)}",
                              hint=f"pip install {' '.join(missing)} (CPU builds are fine)")
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)))
    if name == "cmaes":
        if multi_objective:
            raise ConfigError("--sampler cmaes is single-objective", hint="use tpe, nsga2, gp or random")
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    raise ConfigError(f"unknown sampler {name!r}", hint=f"choose one of {', '.join(SAMPLERS)}")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def fidelity_steps(n_dev: int, rungs: Sequence[float]) -> list[int]:
    """Question counts evaluated at each rung (cumulative), always ending with all of them."""
    steps = sorted({min(n_dev, max(1, math.ceil(f * n_dev))) for f in rungs if f > 0} | {n_dev})
    return [s for s in steps if s > 0]


def make_pruner(name: str, steps: Sequence[int], *, trials: int) -> optuna.pruners.BasePruner:
    if name == "none" or len(steps) < 2:
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, trials // 5)), n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=steps[0], reduction_factor=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=steps[0], max_resource=steps[-1], reduction_factor=2)
    raise ConfigError(f"unknown pruner {name!r}", hint=f"choose one of {', '.join(PRUNERS)}")


def make_storage(url: str | None, heartbeat_s: float = 10.0) -> optuna.storages.BaseStorage | None:
    """An RDB storage with heartbeats: a killed worker's trial is failed and retried later.

    A worker's heartbeat is written every ``heartbeat_s`` while its trial runs; a RUNNING
    trial silent for ``3 * heartbeat_s`` is stale (its worker died) and is failed on the
    next start of any worker (:meth:`Search.optimize`).
    """
    if url is None:
        return None
    sqlite = url.startswith("sqlite")
    if sqlite and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        # Workers starting together on a new database would race to create its schema.
        with _admission_lock(url), warnings.catch_warnings():  # heartbeats: "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=max(1, round(heartbeat_s)), grace_period=max(2, round(3 * heartbeat_s)),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None)
    except Exception as exc:  # SQLAlchemy raises many kinds here
        raise ConfigError(f"cannot open study storage {url!r}: {exc}",
                          hint="use sqlite:///path/study.sqlite3 or a SQLAlchemy database URL") from None
    if sqlite:
        _sqlite_wal(storage)
    return storage


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL + synchronous=NORMAL: several workers read while one writes, and a commit does not
    wait for an fsync (a crashed process loses nothing; only a power cut may lose the last trial)."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:  # pragma: no cover - exercised through SQLite
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    engine.dispose()  # connections opened before the listener reconnect with it


class SurplusTrial(Exception):
    """Raised inside a trial that would exceed the study's target; Optuna records it as FAIL."""


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDB storage when it has heartbeats (Optuna wraps it in a cache layer)."""
    storage = getattr(study._storage, "_backend", study._storage)
    if isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval is not None:
        return storage
    return None


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9; it is what recovers dead workers
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _admission_lock(url: str | None) -> Any:
    """A lock every worker of one study storage shares, wherever it runs.

    SQLite: a file lock beside the database (workers share its filesystem). PostgreSQL and
    MySQL: the database's own advisory lock, so workers on different machines serialise
    through the server they already talk to. In-memory or other storages: nothing to share.
    """
    if not url:
        return contextlib.nullcontext()
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        from filelock import FileLock

        return FileLock(str(Path(url.removeprefix("sqlite:///")).expanduser()) + ".admission.lock", timeout=120)
    if url.startswith(("postgresql", "mysql")):
        return _database_lock(url)
    return contextlib.nullcontext()


# One advisory-lock key for archon's admissions in a database (any 63-bit integer works).
_ADVISORY_KEY = zlib.crc32(b"archon.search.admission")


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claimer_died(by: str, result: Any) -> bool:
    """A claim without a result whose worker ran on this host and is gone (a killed rerun)."""
    host, _, pid = by.rpartition(":")
    if result is not None or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def _database_lock(url: str) -> Any:
    """Session-level advisory lock on the study's database server, held for the ``with`` body."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    postgres = engine.dialect.name == "postgresql"
    take, give = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if postgres
                  else ("SELECT GET_LOCK(:k, 120)", "SELECT RELEASE_LOCK(:k)"))
    key: int | str = _ADVISORY_KEY if postgres else f"archon-{_ADVISORY_KEY}"
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(take), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(give), {"k": key})
    finally:
        engine.dispose()


def _live_running_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> set[int]:
    """Storage ids of RUNNING trials whose worker still beats."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    stale = set(storage._get_stale_trial_ids(study._study_id))
    with _create_scoped_session(storage.scoped_session) as session:
        beating = {tid for (tid,) in session.query(models.TrialHeartbeatModel.trial_id).all()}
    return beating - stale


# -- the search --------------------------------------------------------------------------

class Search:
    """An Optuna study over the pipelines of ``space``, evaluated by ``evaluate`` on ``dev``."""

    def __init__(self, space: SearchSpace, evaluate: EvaluateFn, dev: Sequence[SearchItem],
                 settings: SearchSettings, *, holdout: Sequence[SearchItem] = (),
                 parameters: Callable[[str], float | None] | None = None, reporter: Reporter | None = None) -> None:
        if not dev:
            raise ConfigError("no dev questions to search on", hint="raise --limit or lower --holdout")
        if settings.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {settings.sampler!r}", hint=f"choose one of {', '.join(SAMPLERS)}")
        if settings.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {settings.pruner!r}", hint=f"choose one of {', '.join(PRUNERS)}")
        self.space = space
        self.evaluate = evaluate
        self.dev = list(dev)
        self.holdout = list(holdout)
        self.settings = settings
        self.parameters = parameters
        self.reporter: Reporter = reporter or _Quiet()
        self.question_tokens = statistics.fmean(len(it.query.question_text()) / 4 + 4 for it in self.dev)
        multi = settings.multi_objective
        # rungs serve the pruner and stop over-budget trials early; without either, one pass batches best
        staged = not multi and (settings.pruner != "none" or settings.budget.is_set())
        self.steps = fidelity_steps(len(self.dev), settings.rungs) if staged else [len(self.dev)]
        self.notes: list[str] = list(space.notes)
        if multi and settings.pruner != "none" and len(fidelity_steps(len(self.dev), settings.rungs)) > 1:
            self.notes.append("multi-objective: Optuna prunes single-objective studies only; every trial is "
                              "evaluated on the whole dev set")
        self._study: optuna.Study | None = None

    # -- study ------------------------------------------------------------------------

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = self._open_study()
        return self._study

    def _open_study(self) -> optuna.Study:
        s = self.settings
        sampler = make_sampler(s.sampler, seed=s.seed, multi_objective=s.multi_objective, trials=s.trials,
                               n_startup_trials=s.n_startup_trials)
        pruner = make_pruner(s.pruner, self.steps, trials=s.trials) if not s.multi_objective \
            else optuna.pruners.NopPruner()
        directions = ["maximize", "minimize"] if s.multi_objective else ["maximize"]
        try:
            study = optuna.create_study(storage=make_storage(s.storage, s.heartbeat_s), study_name=s.study_name,
                                        sampler=sampler, pruner=pruner, directions=directions, load_if_exists=True)
        except ValueError as exc:
            raise ConfigError(f"study {s.study_name!r}: {exc}",
                              hint="a study keeps its objectives; pick another --study name") from None
        if [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"study {s.study_name!r} was created "
                              f"{'multi' if len(study.directions) > 1 else 'single'}-objective",
                              hint="rerun with the same --multi-objective setting, or pick another --study name")
        self._check_or_store_attrs(study)
        _fail_stale(study)  # trials of workers that died, on every start
        return study

    def _identity(self) -> dict[str, Any]:
        return {"space": self.space.fingerprint(), "budget": self.settings.budget.limits(),
                "dev_ids": [it.id for it in self.dev], "holdout_ids": [it.id for it in self.holdout],
                "multi_objective": self.settings.multi_objective}

    def _check_or_store_attrs(self, study: optuna.Study) -> None:
        mine = self._identity()
        theirs = study.user_attrs
        if "budget" not in theirs:
            for key, value in mine.items():
                study.set_user_attr(key, value)
            study.set_user_attr("space_name", self.space.name)
            return
        if theirs.get("budget") != mine["budget"]:
            raise ConfigError(f"study {self.settings.study_name!r} was run with budget {theirs.get('budget')}, "
                              f"not {mine['budget']}",
                              hint="feasibility depends on the budget: rerun with the same budget or a new --study")
        if theirs.get("dev_ids") != mine["dev_ids"]:
            raise ConfigError(f"study {self.settings.study_name!r} was run on other dev questions",
                              hint="rerun with the same --benchmark, --limit, --holdout and --seed, or a new --study")
        if theirs.get("space") != mine["space"]:
            self.notes.append("the space file changed since this study started; earlier trials are kept")

    def finished(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=FINISHED)

    # -- one trial --------------------------------------------------------------------

    def _calibration(self) -> tuple[float, bool]:
        """Measured / estimated tokens over evaluated trials: (median ratio, enough data)."""
        ratios = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            est = (t.user_attrs.get("estimate") or {}).get("tokens")
            got = (t.user_attrs.get("cost") or {}).get("tokens")
            if t.user_attrs.get("status") == "evaluated" and est and got:
                ratios.append(got / est)
        if len(ratios) >= 2:
            return statistics.median(ratios), True
        return 1.0, False

    def _constraints(self, trial: optuna.Trial, cost: dict[str, float]) -> dict[str, float]:
        out = {}
        for key, limit in self.settings.budget.limits().items():
            value = cost[key] / limit - 1.0
            trial.set_constraint(f"{key}_per_query", value)
            out[key] = value
        return out

    def _values(self, accuracy: float, tokens: float) -> float | tuple[float, float]:
        return (accuracy, tokens) if self.settings.multi_objective else accuracy

    def _admit(self, trial: optuna.Trial) -> bool:
        """May this trial run without taking the study past its target? (several workers)

        Admission is serialized (a file lock beside a SQLite study, the database's advisory
        lock for PostgreSQL and MySQL: ``_admission_lock``) and each admitted trial
        records its heartbeat and an ``admitted`` mark before the lock is released, so the
        next admission sees it: the study never finishes more than ``settings.trials``.
        Running trials count only while their heartbeat is fresh, so a dead worker's trial
        does not block the study (it is failed once stale, after ``3 * heartbeat_s``); a
        rerun inside that window may stop one trial short, and the next rerun finishes it.
        Other storages (journal files, Redis) have no lock here: concurrent workers may then
        finish up to one extra trial each.
        """
        storage = _rdb(self.study)
        if storage is None:  # in-memory storage: one process, nothing to coordinate
            return True
        with _admission_lock(self.settings.storage):
            storage.record_heartbeat(trial._trial_id)
            alive = _live_running_trials(self.study, storage)
            ahead = sum(1 for t in self.study.get_trials(deepcopy=False)
                        if t._trial_id != trial._trial_id and (t.state in FINISHED or (
                            t.state == TrialState.RUNNING and t.user_attrs.get("admitted")
                            and t._trial_id in alive)))
            if ahead >= self.settings.trials:
                return False
            trial.set_user_attr("admitted", True)
            return True

    def claim_winner_eval(self, trial_number: int) -> Literal["mine", "taken", "running"]:
        """Is this worker the one to evaluate the winner on the held-out set? (once per study)

        Several workers of one study all reach the end. While another worker's trial still
        runs, the winner may change, so nobody evaluates yet ("running"): the worker that
        finishes last does. The first to claim the winner under the admission lock evaluates
        it ("mine") and stores the result (``store_winner_eval``); the others find it
        "taken" and report that result. A new winner (after a larger ``--trials``) is
        claimed anew, and so is one whose claimer died on this host before storing it.
        """
        with _admission_lock(self.settings.storage):
            storage = _rdb(self.study)
            if storage is not None:
                running = {t._trial_id for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                if running & _live_running_trials(self.study, storage):
                    return "running"
            claimed = self.study.user_attrs.get("winner_eval")
            if (claimed is not None and claimed.get("trial") == trial_number
                    and not _claimer_died(claimed.get("by", ""), claimed.get("result"))):
                return "taken"
            self.study.set_user_attr("winner_eval", {"trial": trial_number, "result": None, "by": _worker_id()})
            return "mine"

    def store_winner_eval(self, trial_number: int, result: dict[str, Any]) -> None:
        self.study.set_user_attr("winner_eval", {"trial": trial_number, "result": result, "by": _worker_id()})

    def stored_winner_eval(self, trial_number: int) -> dict[str, Any] | None:
        claimed = self.study.user_attrs.get("winner_eval") or {}
        return claimed.get("result") if claimed.get("trial") == trial_number else None

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        if not self._admit(trial):
            trial.set_user_attr("status", "surplus")
            self.study.stop()
            raise SurplusTrial(f"the study already has its {self.settings.trials} trials (other workers)")
        self.reporter.trial_started(trial.number)
        try:
            config = build_config(self.space, OptunaSuggester(trial), name=f"{self.space.name}-t{trial.number}")
            parsed = parse_config(config)
            build_graph(parsed)
        except (InvalidPipeline, ConfigError) as exc:
            reason = exc.render() if isinstance(exc, ConfigError) else str(exc)
            trial.set_user_attr("status", "invalid")
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(f"invalid pipeline: {reason}") from None
        trial.set_user_attr("config", config)
        trial.set_user_attr("label", describe(config))
        est = estimate_cost(config, question_tokens=self.question_tokens, parameters=self._params_of)
        trial.set_user_attr("estimate", est.to_dict())

        over = self._clearly_over(est)
        if over:
            trial.set_user_attr("status", "skipped")
            trial.set_user_attr("reason", over["reason"])
            trial.set_user_attr("feasible", False)
            self._constraints(trial, over["cost"])
            return self._values(0.0, over["cost"]["tokens"])

        measured = Measured()
        limits = self.settings.budget.limits()
        done = 0
        for i, step in enumerate(self.steps):
            outcome = self.evaluate(parsed, self.dev[done:step])
            measured.scores += outcome.scores
            measured.usage = sum(outcome.usage, measured.usage)
            measured.saved = sum(outcome.saved, measured.saved)
            measured.errors += outcome.errors
            done = step
            last = i == len(self.steps) - 1
            if last or self.settings.multi_objective:
                break
            trial.report(measured.accuracy, step)
            self.reporter.trial_rung(trial.number, step, measured.accuracy)
            cost = measured.per_query()
            early = [k for k, lim in limits.items() if cost[k] > lim * (1 + self.settings.skip_margin)]
            if early:
                self._record(trial, measured)
                trial.set_user_attr("status", "over_budget")
                trial.set_user_attr("reason", f"measured {', '.join(f'{k} {cost[k]:,.0f}/query' for k in early)} "
                                              f"on {step} questions; over budget")
                trial.set_user_attr("feasible", False)
                self._constraints(trial, cost)
                return self._values(measured.accuracy, cost["tokens"])
            if trial.should_prune():
                self._record(trial, measured)
                trial.set_user_attr("status", "pruned")
                trial.set_user_attr("reason", f"accuracy {measured.accuracy:.3f} on {step} questions")
                raise optuna.TrialPruned(f"pruned at {step} questions")
        self._record(trial, measured)
        cost = measured.per_query()
        violations = self._constraints(trial, cost)
        feasible = all(v <= 0 for v in violations.values())
        trial.set_user_attr("status", "evaluated")
        trial.set_user_attr("feasible", feasible)
        if not feasible:
            trial.set_user_attr("reason", "over budget: " + ", ".join(
                f"{k} {cost[k]:,.1f}/query > {limits[k]:,.1f}" for k, v in violations.items() if v > 0))
        return self._values(measured.accuracy, cost["tokens"])

    def _params_of(self, model: str) -> float | None:
        return self.parameters(model) if self.parameters else None

    def _record(self, trial: optuna.Trial, m: Measured) -> None:
        trial.set_user_attr("accuracy", m.accuracy)
        trial.set_user_attr("n_queries", m.n)
        trial.set_user_attr("cost", m.per_query())
        trial.set_user_attr("reuse", {"new_tokens": m.usage.total_tokens, "saved_tokens": m.saved.total_tokens,
                                      "new_calls": m.usage.calls, "saved_calls": m.saved.calls,
                                      "cache_hits": m.usage.cache_hits, "errors": m.errors})

    def _clearly_over(self, est: Any) -> dict[str, Any] | None:
        limits = self.settings.budget.limits()
        if not limits:
            return None
        ratio, calibrated = self._calibration()
        margin = self.settings.skip_margin if calibrated else max(1.0, self.settings.skip_margin)
        predicted = {"tokens": est.tokens * ratio, "flops": est.flops * ratio, "calls": est.calls}
        reasons = []
        for key, limit in limits.items():
            # calls are counted, not guessed: the estimate is a lower bound, no margin needed
            allowed = limit if key == "calls" else limit * (1 + margin)
            if predicted[key] > allowed:
                reasons.append(f"estimated {key} {predicted[key]:,.0f}/query > {limit:,.0f} budget"
                               + ("" if key == "calls" else f" (+{margin:.0%} margin)"))
        if not reasons:
            return None
        return {"reason": "; ".join(reasons), "cost": {**predicted, "prompt_tokens": est.prompt_tokens * ratio,
                                                        "completion_tokens": est.completion_tokens * ratio}}

    # -- the loop ---------------------------------------------------------------------

    def remaining(self) -> int:
        return max(0, self.settings.trials - len(self.finished()))

    def optimize(self) -> optuna.Study:
        """Runs trials until the study holds ``settings.trials`` finished trials (resumable)."""
        study = self.study
        _fail_stale(study)  # also when the target is reached: no RUNNING forever
        todo = self.remaining()
        if todo == 0:
            return study
        callbacks = [optuna.study.MaxTrialsCallback(self.settings.trials, states=FINISHED),
                     lambda st, tr: self.reporter.trial_finished(st, tr)]
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message=".*independent sampl.*")
            study.optimize(self.objective, n_trials=todo, timeout=self.settings.timeout_s, callbacks=callbacks,
                           gc_after_trial=False, catch=(SurplusTrial,))
        return study


# -- reading a finished study -------------------------------------------------------------

def full_fidelity(trial: FrozenTrial, n_dev: int) -> bool:
    return (trial.state == TrialState.COMPLETE and trial.user_attrs.get("status") == "evaluated"
            and trial.user_attrs.get("n_queries") == n_dev)


def feasible_trials(trials: Sequence[FrozenTrial], n_dev: int) -> list[FrozenTrial]:
    """Evaluated on every dev question and within every budget."""
    return [t for t in trials if full_fidelity(t, n_dev) and t.user_attrs.get("feasible", True)
            and all(v <= 0 for v in t.constraints.values())]


def best_trial(trials: Sequence[FrozenTrial], n_dev: int) -> FrozenTrial | None:
    """Highest dev accuracy among feasible trials; ties go to the cheaper, then the earlier."""
    pool = feasible_trials(trials, n_dev)
    if not pool:
        return None
    return min(pool, key=lambda t: (-t.user_attrs["accuracy"], t.user_attrs["cost"]["tokens"], t.number))


def pareto_front(trials: Sequence[FrozenTrial], n_dev: int) -> list[FrozenTrial]:
    """Feasible trials no other feasible trial beats on both accuracy and tokens per query."""
    pool = feasible_trials(trials, n_dev)
    front = []
    for t in pool:
        a, c = t.user_attrs["accuracy"], t.user_attrs["cost"]["tokens"]
        dominated = any((o.user_attrs["accuracy"] >= a and o.user_attrs["cost"]["tokens"] <= c)
                        and (o.user_attrs["accuracy"] > a or o.user_attrs["cost"]["tokens"] < c) for o in pool)
        if not dominated:
            front.append(t)
    # one trial per distinct pipeline and point
    seen: set[tuple[float, float]] = set()
    out = []
    for t in sorted(front, key=lambda t: (t.user_attrs["cost"]["tokens"], -t.user_attrs["accuracy"], t.number)):
        key = (round(t.user_attrs["accuracy"], 9), round(t.user_attrs["cost"]["tokens"], 6))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out
