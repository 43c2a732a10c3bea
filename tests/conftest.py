"""Shared fixtures: tiny competition folders, the real data (skipped when absent) and a CLI runner."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# One torch thread: the tiny test networks gain nothing from more, and on a shared 2-core machine more
# threads spin against each other. No progress bars in test logs. Subprocesses inherit both.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared next to the repo, read-only


def _shared(name: str, needed: tuple[str, ...], what: str) -> Path:
    """SHARED_DATA/name, or a skip saying that `what` is not there."""
    folder = SHARED_DATA / name
    if not all((folder / part).exists() for part in needed):
        pytest.skip(f"{what} not available at {folder}")
    return folder


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The published competition files; tests that need them skip where they are not mounted."""
    return _shared("comp5329", ("train.csv", "test.csv"), "real competition data")


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """97 labelled real COCO photos in the competition's layout (data/N.jpg); tests that need them skip where absent."""
    return _shared("coco-mini", ("train.csv", "data"), "the coco-mini photos")


@pytest.fixture(scope="session")
def demo_csv_master(tmp_path_factory) -> Path:
    """A synthetic 60/20 competition folder (CSV only, no images); copy it before changing it."""
    from solution.demo import make_dataset

    return make_dataset(tmp_path_factory.mktemp("demo_csv") / "D", n_train=60, n_test=20, images=False)


@pytest.fixture
def demo_csv(demo_csv_master, tmp_path) -> Path:
    """A private copy of the synthetic competition folder, free to damage."""
    return Path(shutil.copytree(demo_csv_master, tmp_path / "D"))


@pytest.fixture
def noise_images(tmp_path):
    """noise_images(n, suffix) -> paths of n random 48x40 RGB images in tmp_path."""
    import numpy as np
    from PIL import Image

    def make(n: int, suffix: str = ".jpg") -> list[Path]:
        rng = np.random.default_rng(0)
        paths = [tmp_path / f"{i}{suffix}" for i in range(n)]
        for path in paths:
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        return paths

    return make


@pytest.fixture
def write_comp(tmp_path):
    """write_comp(train_text, test_text) -> a data_dir holding exactly those bytes (str is UTF-8 encoded)."""

    def write(train, test, name: str = "D") -> Path:
        root = tmp_path / name
        root.mkdir()
        for file, content in (("train.csv", train), ("test.csv", test)):
            (root / file).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return root

    return write


def _run_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "solution", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


class BackgroundCli:
    """`python -m solution ARGS` started now and collected later, so slow runs overlap other tests."""

    def __init__(self, *args):
        self.args = list(map(str, args))
        # files, not pipes: a long log would fill a pipe nobody reads yet and stall the run
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "solution", *self.args], cwd=REPO, text=True,
                                     stdout=self.out, stderr=self.err)
        self._result = None

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        if self._result is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            texts = []
            for fh in (self.out, self.err):
                fh.seek(0)
                texts.append(fh.read())
                fh.close()
            self._result = subprocess.CompletedProcess(self.args, self.proc.returncode, *texts)
        return self._result


# ---- slow CLI runs started as soon as collection ends -------------------------------------------
# A test module that defines start_background(root, start) gets it called once, right after collection,
# and its tests are moved to the end of the run: its slow subprocesses then overlap every other test.
# Among those modules, one with a larger BACKGROUND_LAST (default 0) runs later: the module whose run ends
# last goes last, so the others' tests use the time its run still needs instead of waiting for it.
# The module reads what it started from BACKGROUND[module name] (None when it is run some other way).

BACKGROUND: dict[str, dict] = {}
_STARTED: list[BackgroundCli] = []
_ROOTS: list[Path] = []


def _background_start(*args) -> BackgroundCli:
    _STARTED.append(BackgroundCli(*args))
    return _STARTED[-1]


def _background_modules(items):
    return {item.module.__name__: item.module for item in items
            if getattr(item, "module", None) is not None and hasattr(item.module, "start_background")}


def pytest_collection_modifyitems(session, config, items):
    late = _background_modules(items)

    def place(item) -> tuple[bool, int]:
        module = late.get(getattr(getattr(item, "module", None), "__name__", ""))
        return module is not None, getattr(module, "BACKGROUND_LAST", 0)

    items.sort(key=place)  # stable: within a place, the collected order


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    for name, module in _background_modules(session.items).items():
        root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        _ROOTS.append(root)
        BACKGROUND[name] = module.start_background(root, _background_start)


def pytest_sessionfinish(session, exitstatus):
    for run in _STARTED:  # never leave a child running
        if run.proc.poll() is None:
            run.proc.kill()
        run.result()
    for root in _ROOTS:
        shutil.rmtree(root, ignore_errors=True)


def _assert_cli_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one stderr line, starting 'error:', naming every needle, and no traceback anywhere."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == 2, f"exit {proc.returncode}\n{out}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not named in: {line}"
    return line


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(*args) -> CompletedProcess of `python -m solution ARGS` from the repo root."""
    return _run_cli


@pytest.fixture
def run_main(capsys):
    """run_main(*args) -> CompletedProcess of the CLI's main(ARGS) run in this process, stdout and stderr captured. For
    runs that end before training: importing torch in a fresh interpreter costs more than the check itself, and on
    two cores beside the background runs it took 10 to 20 s a test."""
    from solution.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def background() -> dict:
    """What each module's start_background returned, by module name."""
    return BACKGROUND


@pytest.fixture(scope="session")
def start_cli():
    """start_cli(*args) -> BackgroundCli; call .result() for the CompletedProcess."""
    started = []

    def start(*args) -> BackgroundCli:
        started.append(BackgroundCli(*args))
        return started[-1]

    yield start
    for run in started:  # never leave a child running
        if run.proc.poll() is None:
            run.proc.kill()
        run.result()


@pytest.fixture(scope="session")
def assert_cli_error():
    """assert_cli_error(proc, *needles) -> the error line, after checking the one-line error contract."""
    return _assert_cli_error


def assert_nothing_half_written(out_dir: Path) -> None:
    """No folds, no submission and no temp files in out_dir after a failed run."""
    if not out_dir.exists():
        return
    assert not (out_dir / "folds" / "folds.csv").exists()
    assert not (out_dir / "submissions" / "submission.csv").exists()
    assert not list(out_dir.rglob("*.tmp")), list(out_dir.rglob("*.tmp"))


@pytest.fixture(scope="session")
def nothing_half_written():
    return assert_nothing_half_written
