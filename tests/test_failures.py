"""Failures of the machine end in one line: a disk that fills at the image cache, a checkpoint, an OOF file or
the submission (a real small tmpfs where mount is allowed, and everywhere a simulated one: os.write failing
with ENOSPC), the pre-flight estimate of the cache, a log file that cannot be written, and a CUDA
out-of-memory error (simulated on the CPU). Each leaves nothing half-written, and the same command, rerun
with room, completes as an uninterrupted run would."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import solution.images as images
import solution.trainer as trainer
from solution import log
from solution.artefacts import atomic_file, load_arrays
from solution.cli import main as cli_main
from solution.demo import make_dataset
from solution.errors import MACHINE_ERRNOS, UserError
from solution.images import CACHE_SCALE, ImageStore, load_rgb

TINY = ["n_folds=2", "fold=0", "num_workers=0", "image.model=test_resnet", "image.size=32", "image.pretrained=false",
        "image.batch_size=8", "image.epochs=2", "patience=10", "tune.trials=2", "tune.threshold_trials=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("failures") / "data", n_train=24, n_test=6, size=(40, 32))


def run(run_main, *args) -> tuple[int, str]:
    """The CLI in this process: (exit code, stderr)."""
    proc = run_main(*args)
    return proc.returncode, proc.stderr


def assert_one_line(code: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback (nor logging's), and a last stderr line 'error: ...' naming every needle."""
    assert "Traceback" not in err and "Logging error" not in err, err
    assert code == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(n in line for n in needles), line
    return line


# ---- a disk that fills up ----------------------------------------------------------------------

class TmpfsDisk:
    """A real tmpfs on `folder`, filled by a ballast file but for `room` bytes; make_room() deletes the ballast."""

    def __init__(self, folder: Path, room: int):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                                     capture_output=True, text=True)
            refused = mounted.returncode and mounted.stderr.strip()
        except OSError as err:  # no mount command
            refused = str(err)
        if refused:
            pytest.skip(f"cannot mount a tmpfs here ({refused}); the simulated disk covers this case")
        self.folder, self.ballast = folder, folder / "ballast"
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, bytes(1 << 16))
        except OSError as err:
            assert err.errno == errno.ENOSPC
        os.ftruncate(fd, os.fstat(fd).st_size - room)
        os.close(fd)

    def make_room(self) -> None:
        self.ballast.unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], check=True)


class SimulatedDisk:
    """os.write into files under `folder` writes what fits of `room` bytes, then fails with ENOSPC, as a disk
    that fills up does (no privileges needed); make_room() lifts the limit."""

    def __init__(self, monkeypatch, folder: Path, room: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix, self.room = str(folder.resolve()) + os.sep, room
        real_write = os.write

        def write(fd, data):
            if self.room is None or not os.readlink(f"/proc/self/fd/{fd}").startswith(self.prefix):
                return real_write(fd, data)
            if self.room == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = real_write(fd, memoryview(data).cast("B")[:self.room])
            self.room -= written
            return written

        monkeypatch.setattr(os, "write", write)

    def make_room(self) -> None:
        self.room = None

    def close(self) -> None:
        pass


@pytest.fixture(params=["tmpfs", "simulated"])
def full_disk(request, monkeypatch):
    """full_disk(folder, room) -> a disk at `folder` with `room` bytes free: a real tmpfs (skipped where mount is
    not allowed) or the simulated one."""
    made = []

    def make(folder: Path, room: int = 0):
        made.append(TmpfsDisk(folder, room) if request.param == "tmpfs" else SimulatedDisk(monkeypatch, folder, room))
        return made[-1]

    yield make
    for disk in made:
        disk.close()


def assert_no_temp_files(out: Path) -> None:
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))


def test_a_full_disk_while_caching_images_gives_the_space_back_and_a_rerun_completes(data, tmp_path, full_disk,
                                                                                       run_main, monkeypatch):
    out = tmp_path / "out"
    disk = full_disk(out / "cache", room=64_000)  # room for a dozen of the 30 images
    monkeypatch.setattr(ImageStore, "_check_room", lambda *args: None)  # filled by someone else after the pre-flight
    monkeypatch.setattr(images, "BATCH_BYTES", 20_000)  # published 4 images at a time
    args = ["train", f"data_dir={data}", f"out_dir={out}", "models=resnet50", *TINY]
    assert_one_line(*run(run_main, *args), str(out / "cache" / "images_32."), "No space left on device", "out_dir=")
    index = json.loads((out / "cache" / "images_32.json").read_text())
    spans = sorted((offset, offset + h * w * 3) for offset, h, w, _ in index.values())
    assert 0 < len(index) < 30
    assert (out / "cache" / "images_32.bin").stat().st_size == spans[-1][1] == sum(b - a for a, b in spans)  # truncated
    store = ImageStore(out / "cache", 32)
    for key in index:
        np.testing.assert_array_equal(store.get(Path(key)), load_rgb(Path(key), round(CACHE_SCALE * 32)))
    assert_no_temp_files(out)
    disk.make_room()
    code, err = run(run_main, *args)
    assert code == 0, err[-2000:]
    assert len(json.loads((out / "cache" / "images_32.json").read_text())) == 30
    assert (out / "oof" / "resnet50" / "fold0.npz").exists()


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    """out_dir of fold 0 of resnet50 trained without a hitch."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert cli_main(["train", f"data_dir={data}", f"out_dir={out}", "models=resnet50", *TINY]) == 0
    return out


def test_a_full_disk_at_a_checkpoint_keeps_the_last_finished_epoch_and_a_rerun_repeats_the_uninterrupted_run(
        data, tmp_path, full_disk, run_main, uninterrupted):
    done = uninterrupted / "checkpoints" / "resnet50" / "fold0"
    best, last = ((done / name).stat().st_size for name in ("best.pt", "last.pt"))
    out = tmp_path / "out"
    disk = full_disk(out / "checkpoints" / "resnet50", room=best + last + best // 2)  # epoch 1's two files, not more
    args = ["train", f"data_dir={data}", f"out_dir={out}", "models=resnet50", *TINY]
    assert_one_line(*run(run_main, *args), str(out / "checkpoints" / "resnet50" / "fold0.partial"), ".pt: No space left")
    staged = out / "checkpoints" / "resnet50" / "fold0.partial"
    assert trainer.load_checkpoint(staged / "last.pt")["epoch"] == 1  # whole, the last finished epoch
    assert not (out / "checkpoints" / "resnet50" / "fold0").exists() and not list((out / "oof").glob("resnet50/fold*"))
    assert_no_temp_files(out)
    disk.make_room()
    code, err = run(run_main, *args)
    assert code == 0 and "resuming after epoch 1" in err, err[-2000:]
    for name in ("fold0.npz", "fold0_features.npz"):
        assert load_arrays(out / "oof" / "resnet50" / name)[0]["content"] == \
            load_arrays(uninterrupted / "oof" / "resnet50" / name)[0]["content"]


def test_a_full_disk_at_an_oof_file_writes_no_part_of_the_fold_and_a_rerun_completes(data, tmp_path, full_disk, run_main):
    out = tmp_path / "out"
    disk = full_disk(out / "oof" / "tfidf")
    args = ["train", f"data_dir={data}", f"out_dir={out}", "models=tfidf", *TINY]
    assert_one_line(*run(run_main, *args), f"cannot write {out / 'oof' / 'tfidf' / 'fold0.npz'}: No space left on device")
    assert [p.name for p in (out / "oof" / "tfidf").iterdir()] in ([], ["ballast"])
    assert not (out / "checkpoints" / "tfidf" / "fold0").exists()  # no record: the fold is not done
    assert_no_temp_files(out)
    disk.make_room()
    code, err = run(run_main, *args)
    assert code == 0 and (out / "oof" / "tfidf" / "fold0.npz").exists(), err[-2000:]
    assert (out / "checkpoints" / "tfidf" / "fold0" / "fold.json").exists()


def test_a_full_disk_at_the_submission_writes_none_and_a_rerun_completes(data, tmp_path, full_disk, run_main):
    out = tmp_path / "out"
    disk = full_disk(out / "submissions")
    args = ["all", f"data_dir={data}", f"out_dir={out}", "models=tfidf", "n_folds=2", "tune.trials=2",
            "tune.threshold_trials=2"]
    submission = out / "submissions" / "submission.csv"
    assert_one_line(*run(run_main, *args), f"cannot write {submission}: No space left on device")
    assert not submission.exists()
    assert_no_temp_files(out)
    disk.make_room()
    code, err = run(run_main, *args)
    assert code == 0 and "skipping" in err, err[-2000:]  # the folds trained before the failure are kept
    assert submission.read_text().startswith("ImageID,Labels\n")


@pytest.mark.parametrize("code", sorted(MACHINE_ERRNOS), ids=errno.errorcode.get)
def test_every_refused_write_names_the_file_and_its_reason(tmp_path, monkeypatch, code):
    """ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EPERM, EIO: one line with the system's reason, no temp file."""
    def refuse(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", refuse)
    with pytest.raises(UserError) as info, atomic_file(tmp_path / "a.npz") as fh:
        fh.write(b"bytes")
    assert str(info.value).startswith(f"cannot write {tmp_path / 'a.npz'}: {os.strerror(code)}; ")
    assert "rerun the same command" in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_torch_save_on_a_full_disk_names_the_reason_not_a_zip_position(tmp_path, monkeypatch):
    """torch's writer turns a short write into 'unexpected pos'; the checkpoint line names the disk's reason."""
    SimulatedDisk(monkeypatch, tmp_path, room=1000)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'last.pt'}: No space left on device; "):
        trainer.save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(10_000)})
    assert list(tmp_path.iterdir()) == []


def test_a_log_file_that_cannot_be_written_ends_the_run_in_one_line(data, tmp_path, run_main, monkeypatch):
    """logging would print a '--- Logging error ---' traceback per record and go on."""
    real_emit = log._LogFile.emit

    def full_after_the_first_records(self, record):
        if "data:" in record.getMessage():  # logged once the run is under way
            self.stream.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        real_emit(self, record)

    monkeypatch.setattr(log._LogFile, "emit", full_after_the_first_records)
    code, err = run(run_main, "train", f"data_dir={data}", f"out_dir={tmp_path}", "models=tfidf", *TINY)
    assert_one_line(code, err, f"cannot write {tmp_path / 'logs'}/train-", ".log: No space left on device")


@pytest.mark.parametrize("failure, needles", [
    (OSError(errno.EIO, "Input/output error", "/mnt/out/oof/x.npz"),
     ("failed on /mnt/out/oof/x.npz: Input/output error; the disk reported an I/O error",)),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     ("error: CUDA out of memory. Tried to allocate 2.00 GiB; lower image.batch_size", "device=cpu"))],
    ids=["EIO", "CUDA"])
def test_a_machine_failure_no_stage_names_still_ends_in_one_line(data, tmp_path, run_main, monkeypatch, failure, needles):
    """The CLI's last resort, for what no stage turned into a UserError (torch moving a net to the GPU...)."""
    import solution.tune

    def fail(cfg, comp):
        raise failure

    monkeypatch.setattr(solution.tune, "tune", fail)
    assert_one_line(*run(run_main, "tune", f"data_dir={data}", f"out_dir={tmp_path}"), *needles)


# ---- the pre-flight estimate of the image cache ------------------------------------------------

@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """20 JPEGs of mixed aspect (landscape, portrait, square), as a real data set has."""
    from PIL import Image

    sizes = [(320, 240), (240, 320), (300, 300), (500, 200)] * 5
    paths = [tmp_path / f"{i}.jpg" for i in range(len(sizes))]
    for path, size in zip(paths, sizes):
        Image.new("RGB", size, (90, 20, 200)).save(path)
    return paths


def test_the_cache_size_estimate_is_close_to_what_the_cache_takes(tmp_path, photos):
    """Image by image from the headers (each shape its own), plus the index: old and new while one replaces the other."""
    store = ImageStore(tmp_path / "cache", 100)
    estimate = store.cache_bytes(photos, [str(p.resolve()) for p in photos])
    store.prepare(photos, workers=0, skip_bad=False)
    image_bytes = (tmp_path / "cache" / "images_100.bin").stat().st_size
    index_bytes = (tmp_path / "cache" / "images_100.json").stat().st_size
    assert image_bytes + index_bytes < estimate < image_bytes + 3 * index_bytes


@pytest.mark.parametrize("disk", ["tmpfs", "simulated"])
def test_the_pre_flight_refuses_a_cache_that_cannot_fit_before_decoding_anything(tmp_path, photos, monkeypatch, disk):
    cache = tmp_path / "cache"
    if disk == "tmpfs":
        disk_ = TmpfsDisk(cache, room=200_000)
    else:
        real = images.shutil.disk_usage
        monkeypatch.setattr(images.shutil, "disk_usage", lambda path: real(path)._replace(free=200_000))
    try:
        decoded = []
        monkeypatch.setattr(images, "_decode_job", lambda job: decoded.append(job) or (None, "unused"))
        with pytest.raises(UserError) as info:
            ImageStore(cache, 224).prepare(photos, workers=0, skip_bad=False)
        message = str(info.value)
        assert decoded == [] and not (cache / "images_224.bin").exists()
        assert re.search(r"20 images at image.size=224 need about 6\.\d MB in .*cache, but only 0\.2 MB is free", message)
        assert all(fix in message for fix in ("image.cache=false", "a smaller image.size", "out_dir="))
    finally:
        if disk == "tmpfs":
            disk_.close()


# ---- CUDA out of memory, simulated on the CPU --------------------------------------------------

def test_cuda_out_of_memory_names_the_batch_and_a_batch_that_fits_and_the_fold_resumes(data, tmp_path, run_main,
                                                                                         monkeypatch):
    """Steps of more than 4 rows run out of GPU memory from epoch 2 on; the probe halves 8 to 4, which fits."""
    from solution.recipe.updates import Updater

    real_backward, real_save = Updater._backward, trainer.save_checkpoint
    tried, armed = [], []

    def backward(self, inputs, target, *args):
        tried.append(len(target))
        if armed and len(target) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_backward(self, inputs, target, *args)

    def save(path, obj):
        real_save(path, obj)
        armed.append(path.name == "last.pt")

    monkeypatch.setattr(Updater, "_backward", backward)
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    monkeypatch.setattr(trainer, "gpu_memory", lambda device: "Simulated GPU (8.0 GiB)")
    args = ["train", f"data_dir={data}", f"out_dir={tmp_path}", "models=resnet50", *TINY]
    line = assert_one_line(*run(run_main, *args), "resnet50 fold 0: CUDA out of memory at 8 rows per batch",
                           "image.batch_size=8, image.model=test_resnet, image.size=32", "Simulated GPU (8.0 GiB)",
                           "4 rows fit", "rerun with image.batch_size=4")
    assert tried[-2:] == [8, 4], tried  # the failed step, then one probe at half
    monkeypatch.setattr(Updater, "_backward", real_backward)
    code, err = run(run_main, *args)
    assert code == 0 and "resuming after epoch 1" in err, line + err[-2000:]


def test_cuda_out_of_memory_while_predicting_suggests_the_batch_size_predict_takes(monkeypatch):
    from solution.settings import build_config
    from solution.trainer import ArrayRows, BatchSetting, make_loader, predict

    class Net(torch.nn.Module):
        head = torch.nn.Linear(4, 18)

        def embed(self, x):
            if len(x) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return x

    monkeypatch.setattr(trainer, "gpu_memory", lambda device: "Simulated GPU (8.0 GiB)")
    loader, _ = make_loader(ArrayRows([np.zeros((40, 4), np.float32)], None), 16, build_config(["num_workers=0"]), False)
    with pytest.raises(UserError) as info:
        predict(Net(), loader, torch.device("cpu"), desc="resnet50 fold 1 predict", batch=BatchSetting("batch_size", 8))
    assert str(info.value).startswith("resnet50 fold 1 predict: CUDA out of memory at 16 rows per batch (batch_size=8) "
                                      "on Simulated GPU (8.0 GiB); 2 rows fit (one step tried): rerun with batch_size=1")


def test_predict_takes_a_batch_size_and_otherwise_the_folds_own():
    from solution.settings import build_config
    from solution.predict import recorded_model

    record = {"model": "resnet50", "kind": "image", "config": build_config(["image.batch_size=48"]).to_dict()}
    assert recorded_model(build_config([]), record).cfg.batch_size is None
    assert recorded_model(build_config(["batch_size=4"]), record).cfg.network_batch(48) == 4
    assert recorded_model(build_config([]), record).cfg.image.batch_size == 48
