"""--log-with: wandb (offline) and mlflow (a file store) get the run's configuration, metrics and sample grids, read
back from their own files; TensorBoard, the default, beside them; a missing package or a tracker that cannot start is
one line."""

import json
import struct
from pathlib import Path

import pytest

from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics


def _wandb_records(run_file: Path) -> list:
    """The records of an offline run's ``run-ID.wandb`` file: LevelDB's log format (32 KiB blocks of records, each
    a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte ``:W&B`` header, each record a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, records, pending = run_file.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    offset = 7
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # no room for a header: the block's rest is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:  # zero fill at the end
            break
    return records


@pytest.fixture
def tracker_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    return tmp_path


@pytest.mark.slow
def test_wandb_and_mlflow_record_the_config_the_metrics_and_the_sample_grids(tracker_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x keeps its file store behind this switch
    evaluations = ["--eval-every", "2", "--eval-size", "4"]
    main(fast_args(tracker_env, "r", *evaluations, "--log-with", "tensorboard", "wandb", "mlflow"))
    run = tracker_env / "r"
    logged = {m["epoch"]: m for m in logged_metrics(run)}
    assert sorted(logged) == [0, 1, 2]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # still there, beside the others

    # wandb: the offline run's files under the run directory
    (offline,) = (run / "wandb").glob("offline-run-*")
    records = _wandb_records(next(offline.glob("run-*.wandb")))
    assert next(r.run.display_name for r in records if r.HasField("run")) == "r"
    config = {
        item.key: json.loads(item.value_json) for r in records if r.HasField("config") for item in r.config.update
    }
    assert config["ppo"]["train_batch_size"] == 2 and config["log_with"] == ["tensorboard", "wandb", "mlflow"]
    history = [  # (step, {key: value}) of each logged row
        (r.history.step.num, {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        for r in records
        if r.HasField("history")
    ]
    for epoch in (1, 2):
        row = next(values for step, values in history if step == epoch and "loss" in values)
        assert (
            row["loss"] == pytest.approx(logged[epoch]["loss"]) and row["reward_mean"] == logged[epoch]["reward_mean"]
        )
    grids = {(key.split("/")[0], step) for step, values in history for key in values if key.endswith("/filenames")}
    assert grids == {("samples", 1), ("samples", 2), ("samples-eval", 0), ("samples-eval", 2)}
    assert len(list((offline / "files" / "media" / "images").glob("samples*.png"))) == 4

    # mlflow: its client on the file store
    import mlflow

    client = mlflow.MlflowClient()
    (experiment,) = [e for e in client.search_experiments() if e.name == "genrl"]
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "r" and found.info.status == "FINISHED"
    assert found.data.params["ppo.train_batch_size"] == "2" and found.data.params["epochs"] == "2"
    losses = client.get_metric_history(found.info.run_id, "loss")
    assert [(m.step, m.value) for m in losses] == [(e, pytest.approx(logged[e]["loss"])) for e in (1, 2)]
    assert [m.step for m in client.get_metric_history(found.info.run_id, "eval_reward_mean")] == [0, 2]
    images = [a.path for a in client.list_artifacts(found.info.run_id, "images")]
    for key, step in (("samples", 1), ("samples", 2), ("samples-eval", 0), ("samples-eval", 2)):
        assert any(p.startswith(f"images/{key}+step+{step}+") and p.endswith(".png") for p in images), (key, images)


def test_the_default_logs_to_tensorboard_only(tracker_env):
    main(fast_args(tracker_env, "r", "--epochs", "1"))
    assert list((tracker_env / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tracker_env / "r" / "wandb").exists() and not (tracker_env / "mlruns").exists()
    assert json.loads((tracker_env / "r" / "config.json").read_text())["log_with"] == ["tensorboard"]


def test_a_missing_tracker_package_is_one_line(tracker_env, monkeypatch, capsys):
    monkeypatch.setitem(__import__("genrl.trackers").trackers._PACKAGES, "wandb", "genrl_not_installed_here")
    expect_error(capsys, fast_args(tracker_env, "r", "--log-with", "wandb"), "pip install 'genrl[wandb]'")
    assert not (tracker_env / "r").exists()  # refused before the run directory


def test_a_tracker_that_cannot_start_is_one_line(tracker_env, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # mlflow 3.x refuses its file store without it
    expect_error(capsys, fast_args(tracker_env, "r", "--log-with", "mlflow"), "--log-with mlflow could not start")


def test_a_tracker_that_fails_mid_run_is_one_line(tmp_path):
    from genrl.errors import GenrlError
    from genrl.trackers import Trackers

    class Gone:
        name = "mlflow"

        def log(self, values, step):
            raise ConnectionError("HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded. More detail")

    trackers = Trackers(("mlflow",), tmp_path)
    trackers._started.append(Gone())
    with pytest.raises(GenrlError) as info:
        trackers.log({"loss": 1.0}, step=1)
    assert "--log-with mlflow failed while logging (HTTPConnectionPool" in str(info.value)
    assert "\n" not in str(info.value) and "--resume" in str(info.value)
