"""Experiment trackers (``logger=``): each tracker's own files read back with its own reader and checked against
``history.csv`` and ``metrics.json``, which every run writes whatever the tracker; grouping of sweep cells; what a
missing package says; that a tracker is imported only when chosen and never changes a run's identity."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, compose_config, task_overrides
from helpers.trackers import Recorder
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from ssl4gie.errors import ConfigError
from ssl4gie.loggers import FAILED, KILLED, SUCCESS, RunInfo, Trackers, build_loggers
from ssl4gie.run.identity import fingerprint
from ssl4gie.run.pipeline import execute
from ssl4gie.run.weights import InitialWeights

# two epochs after a validation of the initial weights: rows with and without training values (epoch 0)
RUN = ("trainer.epochs=2", "trainer.val_at_start=true")


def tiny_run(tmp_paths: list[str], tmp_path: Path, *extra: str) -> Path:
    """A tiny segmentation run in ``tmp_path/outputs/run``; returns the run folder."""
    output_dir = tmp_path / "outputs" / "run"
    execute(compose_config(task_overrides("segmentation", tmp_paths, *RUN, *extra), output_dir))
    return output_dir


def history_series(output_dir: Path) -> dict[str, dict[int, float]]:
    """``history.csv`` as {column: {epoch: value}}, empty cells (epoch 0 has no training values) left out."""
    history = pd.read_csv(output_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    return {
        col: {
            int(e): float(v) for e, v in zip(history["epoch"], history[col], strict=True) if not math.isnan(v)
        }
        for col in history.columns
        if col != "epoch"
    }


def final_values(output_dir: Path) -> dict[str, float]:
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {
        f"final/{k}": float(v)
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and isinstance(v, int | float)
    }


# --------------------------------------------------------------------------------------- identity and defaults
def test_the_default_is_csv_and_no_tracker_changes_a_runs_identity_or_folder(tmp_paths, tmp_path):
    base = task_overrides("segmentation", tmp_paths)
    cfg = compose_config(base, tmp_path / "run", hydra=True)
    assert cfg.logger.name == "csv" and "_target_" not in cfg.logger and build_loggers(cfg.logger) == []
    fingerprints = {
        fingerprint(compose_config([*base, f"logger={name}", *opts], tmp_path / "run"), InitialWeights())
        for name, opts in [
            ("csv", []),
            ("tensorboard", []),
            ("mlflow", ["logger.tracking_uri=http://example.org:5000"]),
            ("wandb", ["logger.mode=online", "logger.project=other"]),
        ]
    }
    assert len(fingerprints) == 1
    # a sweep relaunched with another tracker finds its cells in the same folders (and skips the finished ones)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert {"logger", "logger.mode", "logger.tracking_uri", "logger.project"} <= excluded


def test_the_default_run_writes_no_tracker_files(tmp_paths, tmp_path):
    output_dir = tiny_run(tmp_paths, tmp_path)
    assert (output_dir / "metrics.json").exists() and (output_dir / "history.csv").exists()
    written = {p.name for p in (tmp_path / "outputs").rglob("*")}
    assert not written & {"tensorboard", "wandb", "mlruns"}


def test_no_tracker_library_is_imported_unless_chosen():
    code = (
        "import sys, ssl4gie.run.pipeline, ssl4gie.loggers, ssl4gie.engine.trainer; "
        "print([m for m in ('tensorboard', 'torch.utils.tensorboard', 'mlflow', 'wandb') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_scalars_read_back_equal_history_csv(tmp_paths, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir = tiny_run(tmp_paths, tmp_path, "logger=tensorboard")
    acc = EventAccumulator(
        str(output_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    acc.Reload()
    series = history_series(output_dir)
    assert {"lr", "train/data_wait", "train/loss", "val/dice", "step"} <= set(series)
    for key, expected in series.items():
        logged = {e.step: e.value for e in acc.Scalars(key)}
        assert logged.keys() == expected.keys(), key
        for epoch, value in expected.items():  # TensorBoard stores float32
            assert logged[epoch] == pytest.approx(value, rel=1e-6, abs=1e-7), (key, epoch)
    finals = final_values(output_dir)
    assert "final/test/dice" in finals and "final/val/dice" in finals
    for key, value in finals.items():
        (event,) = acc.Scalars(key)
        assert (event.step, event.value) == (2, pytest.approx(value, rel=1e-6, abs=1e-7))
    figures = sorted(p.stem for p in (output_dir / "figures").glob("*.png"))
    assert figures and sorted(t.removeprefix("figures/") for t in acc.Tags()["images"]) == figures
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    config = yaml.safe_load("\n".join(line[4:] for line in text.splitlines()))
    assert config["trainer"]["epochs"] == 2 and config["logger"]["name"] == "tensorboard"
    assert acc.Tensors("status/text_summary")[0].tensor_proto.string_val[0].decode() == SUCCESS


# ----------------------------------------------------------------------------------------------------- MLflow
def test_mlflow_metric_history_equals_history_csv(tmp_paths, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # MLflow 3 refuses its file store without this opt-in: the logger must give it for its default store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    output_dir = tiny_run(tmp_paths, tmp_path, "logger=mlflow")
    client = MlflowClient(tracking_uri=(tmp_path / "outputs" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("ssl4gie")  # a single run: no sweep to name the experiment
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"  # the run folder below output_root
    assert run.data.tags["ssl4gie.run_dir"] == str(output_dir.resolve())
    assert (
        run.data.tags["ssl4gie.fingerprint"]
        == json.loads((output_dir / "metrics.json").read_text())["fingerprint"]
    )
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["logger.name"] == "mlflow"
    for key, expected in history_series(output_dir).items():
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert logged == pytest.approx(expected, rel=1e-12), key
    for key, value in final_values(output_dir).items():
        (metric,) = client.get_metric_history(run.info.run_id, key)
        assert (metric.step, metric.value) == (2, pytest.approx(value, rel=1e-12))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "figures"}
    figures = {f"figures/{p.name}" for p in (output_dir / "figures").glob("*.png")}
    assert figures and {a.path for a in client.list_artifacts(run.info.run_id, "figures")} == figures


# ------------------------------------------------------------------------------------- an interrupted run resumed
def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """The run stops as on Ctrl-C (or a preemption signal) right after it saved ``last.pt`` of ``epoch``."""
    from ssl4gie.engine.trainer import Trainer

    save = Trainer.save

    def save_then_stop(self, last=True, best=False):
        save(self, last=last, best=best)
        if last and self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", save_then_stop)


def test_a_resumed_run_continues_its_unfinished_mlflow_run(tmp_paths, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_paths, tmp_path, "logger=mlflow")
    monkeypatch.undo()
    client = MlflowClient(tracking_uri=(tmp_path / "outputs" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("ssl4gie").experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.status == "KILLED"
    output_dir = tmp_path / "outputs" / "run"
    noted = json.loads((output_dir / "trackers.json").read_text())["mlflow"]
    assert noted["run_id"] == killed.info.run_id and noted["status"] == KILLED

    tiny_run(tmp_paths, tmp_path, "logger=mlflow")  # the same command: resumes from last.pt
    (run,) = client.search_runs([experiment])  # one run, not a second one for the epochs after the resume
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["ssl4gie.resumes"] == "1"
    for key, expected in history_series(output_dir).items():
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == sorted(expected), key  # each epoch logged once
        assert {m.step: m.value for m in history} == pytest.approx(expected, rel=1e-12), key
    assert json.loads((output_dir / "trackers.json").read_text())["mlflow"]["status"] == SUCCESS

    # a finished run is never reopened: the same folder run again from scratch gets a run of its own
    (output_dir / "metrics.json").unlink()  # (a complete run keeps no last.pt)
    tiny_run(tmp_paths, tmp_path, "logger=mlflow")
    assert len(client.search_runs([experiment])) == 2


def test_a_tracker_continues_only_an_unfinished_run_in_the_same_place(tmp_path):
    from ssl4gie.loggers.base import remember, unfinished

    assert unfinished(tmp_path, "mlflow") is None  # nothing noted
    remember(tmp_path, "mlflow", run_id="abc", tracking_uri="file:///a", status="running")
    assert unfinished(tmp_path, "mlflow", tracking_uri="file:///a")["run_id"] == "abc"
    assert unfinished(tmp_path, "mlflow", tracking_uri="sqlite:///b.db") is None  # another store
    assert unfinished(tmp_path, "wandb") is None  # another tracker
    remember(tmp_path, "mlflow", status=FAILED)  # a failed run that runs again continues too
    assert unfinished(tmp_path, "mlflow", tracking_uri="file:///a")["run_id"] == "abc"
    remember(tmp_path, "mlflow", status=SUCCESS)
    assert unfinished(tmp_path, "mlflow", tracking_uri="file:///a") is None
    (tmp_path / "trackers.json").write_text("{not json")
    assert unfinished(tmp_path, "mlflow") is None  # a damaged note: a new tracker run, not a crash


def test_wandb_continues_an_online_run_and_opens_a_new_offline_one(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    from ssl4gie.loggers.base import remember
    from ssl4gie.loggers.wandb import WandbLogger

    calls = []

    class FakeRun:  # what start() uses of a W&B run; the online service is not reachable from the tests
        def __init__(self, id):
            self.id, self.dir, self.url = id, str(tmp_path / "files"), f"https://wandb.ai/run/{id}"

        def define_metric(self, *args, **kwargs):
            pass

    def init(**kwargs):
        calls.append(kwargs)
        return FakeRun(kwargs["id"] or "fresh")

    monkeypatch.setattr(wandb, "init", init)
    run = RunInfo(tmp_path, tmp_path, "run", None, "0" * 16, {})
    remember(tmp_path, "wandb", id="xyz", project="ssl4gie", entity=None, mode="online", status=KILLED)
    WandbLogger(mode="online").start(run)
    assert (calls[-1]["id"], calls[-1]["resume"]) == ("xyz", "allow")
    remember(tmp_path, "wandb", id="xyz", mode="offline", status=KILLED)
    with caplog.at_level("INFO"):
        WandbLogger(mode="offline").start(run)
    assert (calls[-1]["id"], calls[-1]["resume"]) == (None, None)
    assert "W&B cannot continue an offline run" in caplog.text and "interrupted xyz" in caplog.text
    WandbLogger(mode="online", project="other").start(run)  # another project: nothing to continue
    assert calls[-1]["id"] is None


# ------------------------------------------------------------------------------------------- W&B, a sweep cell
BLOCK = (
    32768  # W&B's transaction log: LevelDB-style 32 KiB blocks of CRC32(4) length(2) type(1)-headed chunks
)


def wandb_records(path: Path) -> Iterator:
    """The records of an offline run's ``run-*.wandb`` file, parsed with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def item_key(item) -> str:
    """A history or summary item's key: W&B writes it as ``key`` or as the path ``nested_key``."""
    return item.key or "/".join(item.nested_key)


@contextmanager
def as_sweep_cell(overrides: list[str], sweep_dir: Path, cell: str) -> Iterator[Path]:
    """Hydra's view of a multirun cell (what ``python run.py -m`` sets up), for code that asks HydraConfig."""
    hydra_cfg = compose_config(overrides, hydra=True)
    with open_dict(hydra_cfg):
        hydra_cfg.hydra.mode = "MULTIRUN"
        hydra_cfg.hydra.sweep.dir = str(sweep_dir)
        hydra_cfg.hydra.job.override_dirname = cell
        hydra_cfg.hydra.runtime.output_dir = str(sweep_dir / cell)
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        yield sweep_dir / cell
    finally:
        HydraConfig.instance().cfg = None


def test_wandb_offline_writes_a_run_grouped_by_its_sweep(tmp_paths, tmp_path):
    pytest.importorskip("wandb")
    overrides = task_overrides("segmentation", tmp_paths, *RUN, "logger=wandb", "sweep_name=trackers")
    cell = "column=kvasir_seg,seed=42"
    with as_sweep_cell(overrides, tmp_path / "outputs" / "sweeps" / "trackers", cell) as output_dir:
        execute(compose_config(overrides, output_dir))
    (run_file,) = (output_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name) == ("ssl4gie", "trackers", cell)
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["trainer"]["epochs"] == 2 and config["sweep_name"] == "trackers"
    rows = [
        {item_key(i): json.loads(i.value_json) for i in r.history.item if not item_key(i).startswith("_")}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    series = history_series(output_dir)
    for key, expected in series.items():
        logged = {row["epoch"]: row[key] for row in rows if key in row}
        assert logged == pytest.approx(expected, rel=1e-12), key
    figures = [row for row in rows if any(k.startswith("figures/") for k in row)]
    assert len(figures) == 1 and figures[0]["epoch"] == 2
    summary = {
        item_key(u): json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for u in r.summary.update
        if item_key(u).startswith("final/")
    }
    assert summary == pytest.approx(final_values(output_dir), rel=1e-12)
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


# ---------------------------------------------------------------------------------------------------- pretrain
def test_pretraining_runs_log_their_history_and_reconstructions(tmp_path):
    pytest.importorskip("tensorboard")
    from helpers.pretrain import pretrain_overrides
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir = tmp_path / "run"
    overrides = pretrain_overrides(tmp_path, "mae", "vit_b", "trainer.epochs=1", "logger=tensorboard")
    execute(compose_config(overrides, output_dir))
    acc = EventAccumulator(str(output_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    history = pd.read_csv(output_dir / "history.csv")
    for key in ("train/loss", "lr", "train/data_wait"):
        assert [(e.step, e.value) for e in acc.Scalars(key)] == [
            (1, pytest.approx(float(history[key].iloc[-1]), rel=1e-6))
        ]
    assert acc.Tags()["images"] == ["figures/mae_reconstructions"]


# --------------------------------------------------------------------------------- missing packages, failures
@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_package_names_the_extra_to_install(name, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, name, None)  # what an environment without the package gives: ImportError
    (tracker,) = build_loggers(compose_config([f"logger={name}"]).logger)
    info = RunInfo(tmp_path, tmp_path, "run", None, "0" * 16, {})
    with pytest.raises(ConfigError) as error:
        tracker.start(info)
    assert str(error.value) == f"logger={name} needs the {name} package: pip install -e '.[{name}]'"


def test_a_missing_package_fails_the_run_before_training(monkeypatch, tmp_paths, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        ConfigError, match=r"^logger=mlflow needs the mlflow package: pip install -e '\.\[mlflow\]'$"
    ):
        tiny_run(tmp_paths, tmp_path, "logger=mlflow")
    assert not (tmp_path / "outputs" / "run" / "history.csv").exists()
    assert not (tmp_path / "outputs" / "run" / "last.pt").exists()


def test_trackers_get_the_history_rows_and_the_way_a_run_ended(tmp_paths, tmp_path, monkeypatch):
    import ssl4gie.run.modes

    Recorder.calls = []
    output_dir = tiny_run(tmp_paths, tmp_path, "+logger._target_=helpers.trackers.Recorder")
    epochs = [c[1] for c in Recorder.calls if c[0] == "epoch"]
    # exactly the dicts of history.csv, in order, epoch 0 (initial weights) included
    assert pd.DataFrame(epochs).equals(pd.read_csv(output_dir / "history.csv"))
    assert Recorder.calls[0] == ("start", "run", None) and Recorder.calls[-1] == ("finish", SUCCESS)

    # a run that fails after training: the tracker is finished as failed
    Recorder.calls = []

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ssl4gie.run.modes, "read_run_checkpoint", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny_run(tmp_paths, tmp_path / "again", "+logger._target_=helpers.trackers.Recorder")
    assert [c[0] for c in Recorder.calls] == ["start", "epoch", "epoch", "epoch", "finish"]
    assert Recorder.calls[-1] == ("finish", FAILED)


def test_a_tracker_that_breaks_mid_run_costs_a_warning_not_the_run(caplog):
    broken, healthy = Recorder(fail_at="log_epoch"), Recorder()
    Recorder.calls = []
    with Trackers([broken, healthy]) as trackers:
        trackers.start(RunInfo(Path("r"), Path("."), "r", None, "0" * 16, {}))
        trackers.log_epoch({"epoch": 1, "train/loss": 1.0})
        trackers.log_epoch({"epoch": 2, "train/loss": 0.5})
    # the broken one was told once and then left out; both are finished
    assert [c for c in Recorder.calls if c[0] == "epoch"] == [
        ("epoch", {"epoch": 1, "train/loss": 1.0}),
        ("epoch", {"epoch": 1, "train/loss": 1.0}),
        ("epoch", {"epoch": 2, "train/loss": 0.5}),
    ]
    assert Recorder.calls[-2:] == [("finish", SUCCESS), ("finish", SUCCESS)]
    assert "Recorder.log_epoch failed" in caplog.text

    Recorder.calls = []
    with pytest.raises(KeyboardInterrupt), Trackers([Recorder()]) as trackers:
        trackers.start(RunInfo(Path("r"), Path("."), "r", None, "0" * 16, {}))
        raise KeyboardInterrupt
    assert Recorder.calls[-1] == ("finish", KILLED)
