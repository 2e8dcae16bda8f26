"""WandbLogger (offline) and MLFlowLogger (a local file store) get every scalar and image TensorBoard gets, read
back from what each wrote; the Custom Scalars layout of a run with both callbacks (the `loggers` extra)."""

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import HeadActivationCallback, TaskAccuracyCallback
from tests.test_head_activation import HandWrittenModule, custom_scalars_layout, make_trainer, probes, train_loader

pytest.importorskip("wandb", reason="the loggers extra: pip install -e '.[loggers]'")
pytest.importorskip("mlflow", reason="the loggers extra: pip install -e '.[loggers]'")
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

__all__ = ["probes"]  # a fixture


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def tensorboard_run(log_dir: str) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, np.ndarray]]]:
    """Every scalar and image of the logger's run and its probe runs, a probe run's tags named as the other
    loggers name them: `<group>/<probe>/<name>`."""
    scalars, images = {}, {}
    for folder in [Path(log_dir), *sorted(Path(log_dir).glob("probe_*"))]:
        events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0}).Reload()
        probe = folder.name.removeprefix("probe_") if folder.name.startswith("probe_") else None
        for kind, values, read in (("scalars", scalars, lambda e: e.value),
                                   ("images", images, lambda e: pixels(e.encoded_image_string))):
            for tag in events.Tags()[kind]:
                name = tag.replace("/", f"/{probe}/", 1) if probe else tag
                values[name] = {event.step: read(event) for event in getattr(events, kind.capitalize())(tag)}
    return scalars, images


def wandb_records(run_folder: Path) -> list[dict]:
    """The history rows of an offline run's `.wandb` file: W&B's LevelDB-style log (a 7-byte header, then
    32 KiB blocks of records, each with a 7-byte header: checksum, length, type 1 full / 2-4 first, middle,
    last) of `Record` protobufs. wandb has no reader of its own for these files."""
    data = next(run_folder.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    rows, position, payload = [], 7, b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(payload)
            payload = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


@pytest.mark.slow
def test_wandb_and_mlflow_get_every_tensorboard_scalar_and_image(tmp_path, probes, monkeypatch):
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # nothing reaches a network
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store otherwise
    (tmp_path / "task.jsonl").write_text("".join(json.dumps({"prompt": f"rev {i}+{i}=", "response": str(2 * i)[::-1]})
                                                 + "\n" for i in range(3)))
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="test")
    mlflow_logger = MLFlowLogger(experiment_name="test", save_dir=str(tmp_path / "mlruns"))
    callbacks = [HeadActivationCallback({"doubling": probes["doubling"], "big": probes["big"]}, batch_size=4),
                 TaskAccuracyCallback({"reversed_sum": str(tmp_path / "task.jsonl")}, max_new_tokens=4)]
    trainer = make_trainer(tmp_path, callbacks, max_steps=3, logger=[tensorboard, wandb_logger, mlflow_logger])
    module = HandWrittenModule()
    trainer.fit(module, train_loader(module.tokenizer))
    wandb_logger.experiment.finish()

    layout = custom_scalars_layout(tensorboard.log_dir)  # both callbacks: accuracy beside drift
    assert list(layout) == ["drift", "concentration", "head_probe"]
    assert layout["drift"] == {"pearson vs base": ["^drift/pearson$"], "mse vs base": ["^drift/mse$"],
                                    "eval accuracy": ["^eval/.*"]}

    scalars, images = tensorboard_run(tensorboard.log_dir)
    assert {"drift/doubling/mse", "head_similarity/doubling/big", "eval/reversed_sum/exact_match"} <= set(scalars)
    assert set(images) == {f"head_activation/{probe}/{kind}" for probe in ("doubling", "big")
                           for kind in ("pattern", "change")} | {"head_similarity/change_correlation",
                                                                 "drift/figure"}

    rows = wandb_records(Path(wandb_logger.experiment.dir).parent)
    wandb_scalars, wandb_images = {}, {}
    for row in rows:
        step = row["trainer/global_step"]
        for key, value in row.items():
            if key.endswith("/filenames"):
                (png,) = value
                wandb_images.setdefault(key.removesuffix("/filenames"), {})[step] = pixels(
                    (Path(wandb_logger.experiment.dir) / png).read_bytes())
            elif not key.startswith(("_", "trainer/")) and key.rpartition("/")[0] + "/filenames" not in row:
                wandb_scalars.setdefault(key, {})[step] = value  # not W&B's own, nor an image's width, ...

    client, run_id = mlflow_logger.experiment, mlflow_logger.run_id
    mlflow_scalars = {key: {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}
                      for key in client.get_run(run_id).data.metrics}
    mlflow_images = {}
    for artifact in client.list_artifacts(run_id, "images"):
        name = Path(artifact.path).name
        if name.endswith(".png"):  # beside each, a smaller .webp preview
            key, _, step, *_ = name.split("+")  # <key with / as ~>+step+<step>+timestamp+...
            mlflow_images.setdefault(key.replace("~", "/"), {})[int(step)] = pixels(
                Path(client.download_artifacts(run_id, artifact.path, str(tmp_path / "downloads"))).read_bytes())

    for logged_scalars, logged_images in ((wandb_scalars, wandb_images), (mlflow_scalars, mlflow_images)):
        assert set(logged_scalars) == set(scalars)  # the same names
        for name, by_step in scalars.items():
            assert sorted(logged_scalars[name]) == sorted(by_step), name
            for step, value in by_step.items():
                assert logged_scalars[name][step] == pytest.approx(value, rel=1e-6, abs=1e-7), (name, step)
        assert set(logged_images) == set(images)
        for name, by_step in images.items():
            assert sorted(logged_images[name]) == sorted(by_step), name
            for step, picture in by_step.items():
                np.testing.assert_array_equal(logged_images[name][step], picture, err_msg=f"{name} at {step}")
