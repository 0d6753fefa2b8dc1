"""Experiment trackers (``--report-to tensorboard,mlflow,wandb``) through Accelerate's tracker classes.

A tracker gets what the run directory gets, and nothing else: the resolved config as parameters,
every entry of ``history.jsonl`` as it is written (each loss part and metric under ``train/`` or
``eval/``, at the entry's optimizer step), then the final metrics (``final/``) and the run's
files (report, metrics, config, plots) as artifacts where the tracker keeps files. The history
reaches the trackers through a callback that reads the lines the loop appended, so the values are
exactly those of ``history.jsonl`` and the loop knows no tracker.

No tracker package is imported unless asked for. Only the main process of a multi-process run
logs. Defaults keep everything under the run directory: TensorBoard event files in
``RUN/tensorboard``, an MLflow sqlite store in ``RUN/mlflow`` (unless ``MLFLOW_TRACKING_URI`` names
another), W&B files in ``RUN/wandb`` (offline when there is no API key or the server cannot be
reached, unless ``WANDB_MODE`` says otherwise). ``RUN/tracking.json`` says where each went.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modaltune.errors import ConfigError
from modaltune.run import RunDir, write_text_atomic
from modaltune.trainer.callbacks import Callback, Event

logger = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
#: Files of the run directory sent as artifacts once the run is written (those that exist).
ARTIFACTS = ("report.html", "metrics.json", "config.yaml", "data_report.json", "history.jsonl")
WANDB_HOST = "api.wandb.ai"


# ---- what is logged ------------------------------------------------------------------------------


def metric_key(kind: str, name: str) -> str:
    """The tracker key of history field ``name`` in an entry of ``kind`` ("step" → ``train/``,
    "eval" → ``eval/``). Characters MLflow refuses in a name (``i2t_r@5``) become ``_`` (``i2t_r_at_5``)."""
    prefix = "eval" if kind == "eval" else "train"
    return f"{prefix}/{_clean(name)}"


def _clean(name: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", name.replace("@", "_at_"))


def history_values(entry: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """The optimizer step of a ``history.jsonl`` entry and its numbers by tracker key (``None``s,
    which the history writes for a value that does not exist at that step, are left out)."""
    kind = str(entry.get("kind", "step"))
    values = {metric_key(kind, name): float(value) for name, value in entry.items()
              if name not in ("kind", "step") and isinstance(value, (int, float)) and value is not None
              and math.isfinite(float(value))}
    return int(entry.get("step", 0)), values


def final_values(metrics: Mapping[str, Any], prefix: str = "final") -> dict[str, float]:
    """The numbers of ``metrics.json`` (nested ones by path: ``final/zero_shot/accuracy``); lists
    (the confusion matrix, samples) are in the metrics.json artifact instead."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        key = f"{prefix}/{_clean(str(name))}"
        if isinstance(value, Mapping):
            out.update(final_values(value, key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def config_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The resolved config as flat parameters (``optim.lr``); a None or a list becomes its text."""
    out: dict[str, str | int | float | bool] = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            out.update(config_params(value, key + "."))
        elif isinstance(value, (str, int, float, bool)):
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


# ---- where the process stands ----------------------------------------------------------------------


def is_main_process() -> bool:
    """Whether this process logs: the main one of a multi-process run, or the only one. Asked of
    Accelerate's process state (every process of a launch gets here, so setting it up is collective)."""
    from accelerate.state import PartialState

    return bool(PartialState().is_main_process)


def _accelerate_state() -> None:
    """Accelerate's process state, which its trackers' own logging needs: set up once per process
    (the fit's Accelerator replaces it; in a multi-process run the trainer has set it up already)."""
    from accelerate.state import PartialState

    if not PartialState._shared_state:
        PartialState()


# ---- the trackers ----------------------------------------------------------------------------------


class Backend:
    """One tracker: an Accelerate tracker for start / parameters / values / finish, plus what the
    tracker keeps of the run's files. Only the main process ever builds one, so the Accelerate
    tracker is told not to ask Accelerate's process state itself (``main_process_only``)."""

    name = ""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        tracker.main_process_only = False  # the caller logs from the main process only
        _accelerate_state()

    def start(self, params: dict[str, Any]) -> None:
        self.tracker.start()
        self.tracker.store_init_configuration(params)

    def log(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step=step)

    def files(self, run: RunDir, step: int) -> None:
        """The run's files, once it is written."""

    def end(self, status: str) -> None:
        self.tracker.finish()

    def where(self) -> dict[str, Any]:
        return {}


class TensorBoardBackend(Backend):
    """Event files in ``RUN/tensorboard``: scalars, the config as hyperparameters and as text, the
    plots as images and the report's path as text (TensorBoard keeps no files)."""

    name = "tensorboard"

    def __init__(self, run: RunDir, *, resume: bool) -> None:
        from accelerate.tracking import TensorBoardTracker

        self.dir = run.root / "tensorboard"
        if resume and self.dir.exists():
            # The history was cut back to the checkpoint; the event files follow it (replayed below).
            shutil.rmtree(self.dir)
        super().__init__(TensorBoardTracker("tensorboard", run.root))

    def start(self, params: dict[str, Any]) -> None:
        self.tracker.start()
        from torch.utils.tensorboard.summary import hparams

        # Into the run's own event file (SummaryWriter.add_hparams would open a second run beside it).
        writer = self.tracker.writer
        for summary in hparams(params, {}):
            writer.file_writer.add_summary(summary)
        writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))
        writer.flush()

    def files(self, run: RunDir, step: int) -> None:
        import numpy as np
        from PIL import Image

        writer = self.tracker.writer
        for plot in sorted(run.plots.glob("*.png")):
            with Image.open(plot) as image:
                writer.add_image(f"plots/{plot.stem}", np.asarray(image.convert("RGB")), step, dataformats="HWC")
        if run.report.is_file():
            writer.add_text("report", f"report.html: {run.report.resolve()}", step)
        writer.flush()

    def where(self) -> dict[str, Any]:
        return {"log_dir": str(self.dir)}


class MLflowBackend(Backend):
    """An MLflow run: parameters, metrics by step, the final metrics, and the run's files as artifacts.
    The store is ``MLFLOW_TRACKING_URI`` when set, else a sqlite database under ``RUN/mlflow``."""

    name = "mlflow"

    def __init__(self, run: RunDir, *, previous: dict[str, Any] | None) -> None:
        import mlflow
        from accelerate.tracking import MLflowTracker

        for noisy in ("alembic", "mlflow.store.db.utils"):  # schema set-up chatter on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        store = run.root / "mlflow"
        artifacts = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            store.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(f"sqlite:///{(store / 'mlflow.db').resolve()}")
            artifacts = (store / "artifacts").resolve().as_uri()
        self.previous = (previous or {}).get("run_id")
        tags = {"modaltune.run_dir": str(run.root.resolve())}
        if self.previous:
            tags["modaltune.resumed_from"] = self.previous
        super().__init__(MLflowTracker(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "modaltune"),
                                       logging_dir=artifacts, run_name=run.root.resolve().name, tags=tags))

    def start(self, params: dict[str, Any]) -> None:
        import mlflow

        if self.previous:
            # The run being resumed died without ending its MLflow run; this one carries on from its
            # checkpoint, with the history kept up to there logged again.
            try:
                mlflow.MlflowClient().set_terminated(self.previous, status="KILLED")
            except mlflow.exceptions.MlflowException as exc:
                logger.warning("mlflow: could not mark the interrupted run %s as killed: %s", self.previous, exc)
        super().start(params)

    def files(self, run: RunDir, step: int) -> None:
        for name in ARTIFACTS:
            if (run.root / name).is_file():
                self.tracker.log_artifact(str(run.root / name))
        if any(run.plots.glob("*")):
            self.tracker.log_artifacts(str(run.plots), artifact_path="plots")

    def end(self, status: str) -> None:
        import mlflow

        mlflow.end_run(status=status)

    def where(self) -> dict[str, Any]:
        import mlflow

        info = self.tracker.active_run.info
        return {"tracking_uri": mlflow.get_tracking_uri(), "experiment_id": info.experiment_id,
                "run_id": info.run_id}


def wandb_mode(env: Mapping[str, str], *, has_key: bool, reachable: bool) -> str | None:
    """The W&B mode to set, or None to leave W&B's own choice: the user's ``WANDB_MODE`` wins; without
    an API key, or when the server cannot be reached, the run is logged offline (``wandb sync`` later)."""
    if env.get("WANDB_MODE"):
        return None
    if not has_key or not reachable:
        return "offline"
    return None


def _wandb_key(env: Mapping[str, str]) -> bool:
    if env.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class WandBBackend(Backend):
    """A W&B run under ``RUN/wandb``: config, metrics by step, the final metrics, the plots as images
    and the run's files as an artifact."""

    name = "wandb"

    def __init__(self, run: RunDir) -> None:
        from accelerate.tracking import WandBTracker

        env = os.environ
        has_key = _wandb_key(env)
        mode = wandb_mode(env, has_key=has_key, reachable=has_key and _reachable(WANDB_HOST))
        kwargs: dict[str, Any] = {"dir": str(run.root.resolve()), "name": run.root.resolve().name}
        if mode is not None:
            kwargs["mode"] = mode
            logger.info("wandb: no API key or no connection to %s, logging offline (wandb sync %s later)",
                        WANDB_HOST, run.root / "wandb")
        self.mode = mode or env.get("WANDB_MODE", "online")
        super().__init__(WandBTracker(env.get("WANDB_PROJECT", "modaltune"), **kwargs))

    def files(self, run: RunDir, step: int) -> None:
        import wandb

        wandb_run = self.tracker.run
        images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(run.plots.glob("*.png"))}
        if images:
            wandb_run.log(images, step=step)
        # An artifact rather than wandb.save: a file named config.yaml would collide with W&B's own.
        artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", run.root.resolve().name) + "-run", type="modaltune-run")
        for name in ARTIFACTS:
            if (run.root / name).is_file():
                artifact.add_file(str(run.root / name), name=name)
        if any(run.plots.glob("*")):
            artifact.add_dir(str(run.plots), name="plots")
        wandb_run.log_artifact(artifact)

    def end(self, status: str) -> None:
        self.tracker.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def where(self) -> dict[str, Any]:
        wandb_run = self.tracker.run
        return {"mode": self.mode, "dir": str(wandb_run.dir), "run_id": wandb_run.id}


# ---- one run's trackers --------------------------------------------------------------------------


class HistoryFeed(Callback):
    """Sends each entry the loop appends to ``history.jsonl`` to the trackers, at its step.

    It reads the file from where it last stopped after every step and evaluation. At the start of a
    fit that resumes, the file holds the history kept up to the checkpoint: that is sent first, so a
    tracker's copy of a resumed run equals its ``history.jsonl`` too."""

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking
        self.offset = 0
        self.last_step = 0

    def _read(self) -> None:
        path = self.tracking.run.history
        if not path.is_file():
            return
        with path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                step, values = history_values(json.loads(line))
                self.last_step = max(self.last_step, step)
                if values:
                    self.tracking.log(values, step)

    def on_fit_start(self, event: Event) -> None:
        self._read()

    def on_step_end(self, event: Event) -> None:
        self._read()

    def on_evaluate(self, event: Event) -> None:
        self._read()

    def on_fit_end(self, event: Event) -> None:
        self._read()


class Tracking:
    """The trackers of one training run (none when ``--report-to`` is empty, or on a process other
    than the main one: then every method does nothing)."""

    def __init__(self, run: RunDir, backends: Sequence[Backend] = ()) -> None:
        self.run = run
        self.backends = list(backends)
        self.feed = HistoryFeed(self)
        self.ended = False

    @property
    def callbacks(self) -> list[Callback]:
        return [self.feed] if self.backends else []

    def log(self, values: dict[str, float], step: int) -> None:
        if self.backends:
            _accelerate_state()
        for backend in self.backends:
            backend.log(values, step)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """The final metrics and the run's files, then each tracker's run ends as finished."""
        if not self.backends:
            return
        self.feed._read()  # anything written after the last step (a run with no fit has its whole history here)
        step = self.feed.last_step
        final = final_values(metrics)
        for backend in self.backends:
            if final:
                backend.log(final, step)
            backend.files(self.run, step)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        if self.ended:
            return
        self.ended = True
        if self.backends:
            _accelerate_state()
        for backend in self.backends:
            try:
                backend.end(status)
            except Exception as exc:  # one tracker failing to close must not hide the run's own outcome
                logger.warning("%s: could not end the run: %s", backend.name, exc)


def _tracking_file(run: RunDir) -> Path:
    return run.root / TRACKING_FILE


def _open(names: Sequence[str], run: RunDir, *, resume: bool) -> list[Backend]:
    previous: dict[str, Any] = {}
    if resume and _tracking_file(run).is_file():
        previous = json.loads(_tracking_file(run).read_text())
    backends: list[Backend] = []
    for name in names:
        try:
            if name == "tensorboard":
                backends.append(TensorBoardBackend(run, resume=resume))
            elif name == "mlflow":
                backends.append(MLflowBackend(run, previous=previous.get("mlflow")))
            elif name == "wandb":
                backends.append(WandBBackend(run))
        except ImportError as exc:
            extra = "wandb" if name == "wandb" else "track"
            raise ConfigError(f"--report-to {name}: {exc.name or name} is not installed; "
                              f"pip install 'modaltune[{extra}]'") from None
    return backends


@contextmanager
def tracking(names: Sequence[str], run: RunDir, params: Mapping[str, Any], *, resume: bool = False,
             ) -> Iterator[Tracking]:
    """The trackers ``names`` for the run in ``run``, started with ``params``; the caller passes
    ``.callbacks`` to the fit and calls ``.finish(metrics)`` once the run directory is written. A run
    that raises ends its tracker runs as failed (killed for SIGTERM or Ctrl-C)."""
    if not names or not is_main_process():
        yield Tracking(run)
        return
    backends = _open(names, run, resume=resume)
    tracked = Tracking(run, backends)
    flat = config_params(params)
    try:
        for backend in backends:
            backend.start(flat)
        write_text_atomic(_tracking_file(run), json.dumps({b.name: b.where() for b in backends}, indent=2) + "\n")
        yield tracked
    except (SystemExit, KeyboardInterrupt):
        tracked.end("KILLED")
        raise
    except BaseException:
        tracked.end("FAILED")
        raise
    tracked.end("FINISHED")
