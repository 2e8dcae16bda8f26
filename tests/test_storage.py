"""lightning_sft.storage: round trips, the index, atomic writes and refused inputs."""

import json
import multiprocessing
import os

import pytest
import torch
from safetensors import safe_open

from lightning_sft import storage
from lightning_sft.user_errors import user_error_message


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    patterns = {("gsm8k", step): torch.rand(2, 4) for step in (0, 1, 4)} | {("math", 0): torch.rand(2, 4)}
    per_example, losses = torch.rand(3, 2, 4), torch.rand(3)
    for (probe, step), pattern in patterns.items():
        storage.save_pattern(tmp_path, probe, step, pattern.double(), metrics={"gini": step / 10},
                             model={"name_or_path": "tiny"})
    path = storage.save_pattern(tmp_path, "gsm8k", 2, patterns["gsm8k", 1], per_example=per_example, losses=losses)
    assert path == tmp_path / "gsm8k" / "step_00000002.safetensors"

    loaded = storage.load_patterns(tmp_path)
    assert list(loaded) == ["gsm8k", "math"] and list(loaded["gsm8k"]) == [0, 1, 2, 4]
    for (probe, step), pattern in patterns.items():
        assert loaded[probe][step].dtype == torch.float32
        assert torch.equal(loaded[probe][step], pattern)
    tensors = storage.load_pattern_file(path)
    assert set(tensors) == {"pattern", "per_example", "losses"}
    assert torch.equal(tensors["per_example"], per_example) and torch.equal(tensors["losses"], losses)
    with safe_open(path, framework="pt") as file:
        assert file.metadata() == {"format_version": "1", "probe": "gsm8k", "step": "2"}

    raw = json.loads((tmp_path / "index.json").read_text())
    assert raw["format_version"] == 1 and (raw["num_layers"], raw["num_heads"]) == (2, 4)
    assert raw["model"] == {"name_or_path": "tiny"}
    assert raw["probes"]["gsm8k"]["steps"] == [0, 1, 2, 4]
    assert raw["probes"]["gsm8k"]["metrics"] == {"0": {"gini": 0.0}, "1": {"gini": 0.1}, "4": {"gini": 0.4}}
    index = storage.load_index(tmp_path)
    assert index["probes"]["math"]["metrics"] == {0: {"gini": 0.0}}

    # Saving a step again replaces it.
    storage.save_pattern(tmp_path, "math", 0, torch.ones(2, 4), metrics={"gini": 0.5})
    assert torch.equal(storage.load_patterns(tmp_path)["math"][0], torch.ones(2, 4))
    assert storage.load_index(tmp_path)["probes"]["math"] == {"steps": [0], "metrics": {0: {"gini": 0.5}}}


def test_no_temp_files_left_and_failed_write_keeps_old_file(tmp_path, monkeypatch):
    storage.save_pattern(tmp_path, "arc", 0, torch.rand(2, 4))
    storage.save_pattern(tmp_path, "arc", 1, torch.rand(2, 4))
    names = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*"))
    assert names == [".lock", "arc", "arc/step_00000000.safetensors", "arc/step_00000001.safetensors", "index.json"]

    target = tmp_path / "note.txt"
    storage.atomic_write_text(target, "old")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        storage.atomic_write_text(target, "new")
    with pytest.raises(OSError, match="disk full"):
        storage.save_pattern(tmp_path, "arc", 2, torch.rand(2, 4))
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == sorted(names + ["note.txt"])
    assert list(storage.load_patterns(tmp_path)["arc"]) == [0, 1]


def test_written_files_follow_the_umask(tmp_path):
    storage.atomic_write_bytes(tmp_path / "a.bin", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("name", ["", ".hidden", "-lead", "a/b", "../up", "sp ace", "ü"])
def test_unsafe_probe_names_are_refused(tmp_path, name):
    """One rule, in storage, for the callback and the files: a leading '-' reads as a CLI option."""
    with pytest.raises(ValueError, match="not safe"):
        storage.save_pattern(tmp_path, name, 0, torch.rand(2, 4))
    assert not any(tmp_path.iterdir())


def test_another_runs_directory_is_refused(tmp_path):
    storage.save_pattern(tmp_path, "gsm8k", 0, torch.rand(2, 4), run_id="first")
    storage.save_pattern(tmp_path, "gsm8k", 1, torch.rand(2, 4), run_id="first")
    with pytest.raises(ValueError, match=f"{tmp_path} holds the patterns of run first, not of this run \\(second\\)"):
        storage.save_pattern(tmp_path, "gsm8k", 2, torch.rand(2, 4), run_id="second")
    assert storage.load_index(tmp_path)["run_id"] == "first"
    assert sorted(storage.load_patterns(tmp_path)["gsm8k"]) == [0, 1]


@pytest.mark.parametrize("index_text, message", [
    ('{"format_version": 1, "num_layers": 2, "num_he', "is not valid JSON"),
    ('{"format_version": 1, "num_layers": 2, "num_heads": 4, "probes": []}', "'probes' is \\[\\]"),
    ('{"format_version": 1, "num_layers": 2, "num_heads": 4, "probes": {"a": 3}}', "'probes' is"),
])
def test_corrupt_index_is_an_error_naming_it(tmp_path, index_text, message):
    storage.save_pattern(tmp_path, "gsm8k", 0, torch.rand(2, 4))
    (tmp_path / "index.json").write_text(index_text)
    for read in (storage.load_index, storage.load_patterns):
        with pytest.raises(ValueError, match=f"{tmp_path / 'index.json'}.*{message}"):
            read(tmp_path)


def test_truncated_pattern_file_is_an_error_naming_it(tmp_path):
    path = storage.save_pattern(tmp_path, "gsm8k", 0, torch.rand(2, 4))
    path.write_bytes(path.read_bytes()[:-5])
    for read in (lambda: storage.load_patterns(tmp_path), lambda: storage.load_pattern_file(path)):
        with pytest.raises(ValueError, match=f"{path} is not a readable safetensors file .*truncated or corrupt"):
            read()


def test_shape_mismatches_are_refused(tmp_path):
    storage.save_pattern(tmp_path, "gsm8k", 0, torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"pattern has shape \(3, 4\) but .*index.json holds .* shape \(2, 4\)"):
        storage.save_pattern(tmp_path, "math", 0, torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"per_example has shape \(5, 2, 3\) but pattern has shape \(2, 4\)"):
        storage.save_pattern(tmp_path, "gsm8k", 1, torch.rand(2, 4), per_example=torch.rand(5, 2, 3))
    with pytest.raises(ValueError, match="losses has 4 values but per_example has 5 examples"):
        storage.save_scores(tmp_path / "s.safetensors", torch.rand(2, 4), torch.rand(5, 2, 4), torch.rand(4))
    with pytest.raises(ValueError, match="expected 2 dimensions"):
        storage.save_pattern(tmp_path, "gsm8k", 1, torch.rand(8))
    storage.save_pattern(tmp_path, "gsm8k", 1, torch.rand(2, 4), model={"name_or_path": "a"})
    with pytest.raises(ValueError, match="differs from"):
        storage.save_pattern(tmp_path, "gsm8k", 2, torch.rand(2, 4), model={"name_or_path": "b"})
    with pytest.raises(ValueError, match="metric pearson=nan"):
        storage.save_pattern(tmp_path, "gsm8k", 3, torch.rand(2, 4), metrics={"pearson": float("nan")})
    assert storage.load_index(tmp_path)["probes"]["gsm8k"]["steps"] == [0, 1]


def test_directory_without_patterns(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected .*index.json"):
        storage.load_patterns(tmp_path)
    storage.save_pattern(tmp_path, "gsm8k", 0, torch.rand(2, 4))
    (tmp_path / "gsm8k" / "step_00000000.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="listed in the index but missing"):
        storage.load_patterns(tmp_path)


def test_save_scores_round_trip(tmp_path):
    per_example, losses = torch.rand(3, 2, 4), torch.rand(3)
    path = storage.save_scores(tmp_path / "sub" / "scores.safetensors", per_example.mean(0), per_example, losses,
                               metadata={"model": "tiny", "source": "gsm8k.jsonl"})
    tensors = storage.load_pattern_file(path)
    assert torch.equal(tensors["pattern"], per_example.mean(0)) and torch.equal(tensors["losses"], losses)
    with safe_open(path, framework="pt") as file:
        assert file.metadata() == {"format_version": "1", "model": "tiny", "source": "gsm8k.jsonl"}
    with pytest.raises(ValueError, match="not a str"):
        storage.save_scores(path, per_example.mean(0), per_example, losses, metadata={"examples": 3})


@pytest.mark.parametrize("field, value, message", [
    ("num_layers", "2", "'num_layers' is \"2\"; expected an int >= 1"),
    ("num_heads", True, "'num_heads' is true; expected an int >= 1"),
    ("run_id", 7, "'run_id' is 7; expected a string"),
    ("steps", ["0"], "'probes.gsm8k.steps' is \\[\"0\"\\]; expected a list of ints >= 0"),
    ("metrics", {"zero": {"gini": 0.1}}, "'probes.gsm8k.metrics' has step key 'zero'"),
    ("metrics", {"0": {"gini": "0.1"}}, "'probes.gsm8k.metrics.0' is"),
    ("probe", "../up", "probe name '../up' is not safe"),
])
def test_index_fields_of_the_wrong_type_are_an_error_naming_the_field(tmp_path, field, value, message):
    storage.save_pattern(tmp_path, "gsm8k", 0, torch.rand(2, 4), metrics={"gini": 0.1}, run_id="a")
    index = json.loads((tmp_path / "index.json").read_text())
    if field in ("steps", "metrics"):
        index["probes"]["gsm8k"][field] = value
    elif field == "probe":
        index["probes"][value] = index["probes"].pop("gsm8k")
    else:
        index[field] = value
    (tmp_path / "index.json").write_text(json.dumps(index))
    for read in (storage.load_index, storage.load_patterns):
        with pytest.raises(ValueError, match=f"{tmp_path / 'index.json'}: .*{message}") as error:
            read(tmp_path)
        assert user_error_message(error.value) is not None  # one line from train.py, no traceback


def test_probe_names_too_long_for_a_file_name_are_refused(tmp_path):
    """A probe is a folder `<probe>` and a TensorBoard run `probe_<probe>`: 255 bytes at most (Linux NAME_MAX)."""
    longest = "p" * (255 - len("probe_"))
    storage.save_pattern(tmp_path, longest, 0, torch.rand(2, 4))
    (tmp_path / f"probe_{longest}").mkdir()  # the TensorBoard run's folder name fits too
    with pytest.raises(ValueError, match="is 250 characters long; at most 249"):
        storage.check_probe_name(longest + "p")


@pytest.mark.parametrize("planted", ["before the first save", "after the first save"])
def test_a_probe_folder_planted_as_a_link_is_not_followed(tmp_path, planted):
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    if planted == "after the first save":
        storage.save_pattern(store, "gsm8k", 0, torch.rand(2, 4))
        for path in (store / "gsm8k").iterdir():
            path.unlink()
        (store / "gsm8k").rmdir()
    (store / "gsm8k").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match=f"{store / 'gsm8k'} is a symbolic link") as error:
        storage.save_pattern(store, "gsm8k", 1, torch.rand(2, 4))
    assert user_error_message(error.value) is not None
    assert not any(outside.iterdir())


def test_a_store_that_becomes_unwritable_is_one_line_naming_it(tmp_path, monkeypatch):
    storage.save_pattern(tmp_path, "gsm8k", 0, torch.rand(2, 4))
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):  # what a read-only mount or a chmod answers (root ignores chmod)
        if flags & os.O_CREAT and str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OSError) as error:
        storage.save_pattern(tmp_path, "gsm8k", 1, torch.rand(2, 4))
    message = user_error_message(error.value)
    assert message is not None and str(tmp_path) in message and "Permission denied" in message, message


def _save_concurrently(store_root, run_id, trials, barrier, refused):
    """One of two processes: in each trial, save steps 0-3 of one probe into the trial's store as `run_id`."""
    for trial in range(trials):
        barrier.wait()
        try:
            for step in range(4):
                storage.save_pattern(f"{store_root}/{trial}", "gsm8k", step, torch.full((2, 4), float(run_id)),
                                     run_id=str(run_id))
        except ValueError:
            refused.put((run_id, trial))


def test_two_processes_writing_one_store_never_mix_their_runs(tmp_path):
    """The run-id check, the pattern files and the index are one locked update: the first run to write a store
    owns it, the other is refused, and every file the index lists holds the owner's pattern."""
    trials = 12
    context = multiprocessing.get_context("spawn")
    barrier, refused = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_save_concurrently, args=(str(tmp_path), run_id, trials, barrier, refused))
               for run_id in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0
    refusals = sorted(refused.get(timeout=10)[1] for _ in range(trials))
    assert refusals == list(range(trials))  # each trial: exactly one of the two runs refused
    for trial in range(trials):
        index = storage.load_index(tmp_path / str(trial))
        owner = float(index["run_id"])
        patterns = storage.load_patterns(tmp_path / str(trial))["gsm8k"]
        assert sorted(patterns) == [0, 1, 2, 3]
        assert all(torch.equal(pattern, torch.full((2, 4), owner)) for pattern in patterns.values()), trial
