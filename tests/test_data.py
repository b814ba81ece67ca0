"""Fetching and verification against real HTTP servers on 127.0.0.1 and local directories."""

import gzip
import http.server
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentfit.data import sources as data
from latentfit.data.idx import read_idx, write_idx
from latentfit.data.prepare import prepare_split
from latentfit.data.sources import DataError, fetch_dataset, verify_idx
from tests.synthetic import FileServer, write_synthetic_dataset

FILES = [spec.name for spec in data.file_specs("mnist")]


@pytest.fixture(autouse=True)
def no_official_mirrors(monkeypatch):
    """Tests never reach the internet: the official list is empty unless a test sets it."""
    monkeypatch.setattr(data, "official_mirrors", lambda dataset: [])


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def broken_copy(synthetic_dir, tmp_path, name, damage):
    """A copy of the synthetic mirror with one file damaged by `damage(path)`."""
    mirror = tmp_path / "broken"
    shutil.copytree(synthetic_dir, mirror)
    damage(mirror / name)
    return mirror


def raw_is_clean(raw):
    """data/raw holds only verified files under their final names, or is not there (a failed first download):
    no partial or temporary file in it or beside it."""
    for path in raw.iterdir() if raw.exists() else []:
        assert path.name in FILES, f"stray file {path.name}"
    assert [p.name for p in raw.parent.iterdir() if p.name.startswith(f".{raw.name}.")] == []


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


def test_fetch_over_http_verifies_every_file(synthetic_dir, tmp_path):
    with FileServer(synthetic_dir) as server:
        paths = fetch_dataset("mnist", [server.url], tmp_path / "raw", trust=True)
    assert sorted(p.name for p, _ in paths) == sorted(FILES)
    for path, how in paths:
        assert how == "shape only (data.verify: shape)"
        assert path.read_bytes() == (synthetic_dir / path.name).read_bytes()


def test_bad_sources_are_reported_and_the_next_one_tried(synthetic_dir, tmp_path, capsys):
    missing = tmp_path / "empty"
    missing.mkdir()
    with FileServer(tmp_path / "empty") as not_found, FileServer(synthetic_dir) as good:
        fetch_dataset("mnist", [closed_port_url(), not_found.url, str(missing), good.url], tmp_path / "raw", trust=True)
    log = capsys.readouterr().out + capsys.readouterr().err
    assert "Connection refused" in log or "cannot reach" in log
    assert "HTTP 404" in log
    assert f"no file {missing / FILES[0]}" in log
    raw_is_clean(tmp_path / "raw")


@pytest.mark.parametrize(
    "name, damage, cause",
    [
        ("train-images-idx3-ubyte.gz", lambda p: p.write_bytes(p.read_bytes()[:1000]), "truncated or corrupt gzip"),
        ("t10k-labels-idx1-ubyte.gz", lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(4))),
         "not an IDX file"),
        ("t10k-images-idx3-ubyte.gz", lambda p: write_idx(p, np.zeros((100, 28, 28))), "expected images of shape"),
        ("t10k-labels-idx1-ubyte.gz", lambda p: write_idx(p, np.full(10000, 12)), "labels must be digits"),
        ("train-labels-idx1-ubyte.gz", lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (60000).to_bytes(4, "big"))),
         "IDX header says"),
    ],
)
def test_corrupt_files_fail_with_the_cause_and_leave_nothing(synthetic_dir, tmp_path, name, damage, cause):
    mirror = broken_copy(synthetic_dir, tmp_path, name, damage)
    with FileServer(mirror) as server, pytest.raises(DataError) as err:
        fetch_dataset("mnist", [server.url, str(mirror)], tmp_path / "raw", trust=True)
    message = str(err.value)
    assert name in message and cause in message
    assert server.url + name in message and str(mirror / name) in message  # each source's file by its own name
    assert f"Fix: replace {mirror / name} with an intact copy" in message  # and what to do, naming that file
    assert ".tmp" not in message
    raw_is_clean(tmp_path / "raw")
    assert not (tmp_path / "raw" / name).exists()


def test_official_sources_are_checked_against_the_published_md5(synthetic_dir, tmp_path, monkeypatch):
    with FileServer(synthetic_dir) as server:
        monkeypatch.setattr(data, "official_mirrors", lambda dataset: [server.url])
        with pytest.raises(DataError, match="is not the published"):
            fetch_dataset("mnist", [], tmp_path / "raw", trust=True)  # trust never covers an official source
        # the same bytes from a user's mirror are verified by content and accepted
        fetch_dataset("mnist", [server.url], tmp_path / "raw", trust=True)


def test_a_server_error_is_reported_and_the_next_source_tried(synthetic_dir, tmp_path, capsys):
    class Broken(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            self.send_error(500, "Internal Server Error")

    with FileServer(synthetic_dir, Broken) as broken, FileServer(synthetic_dir) as good:
        fetch_dataset("mnist", [broken.url, good.url], tmp_path / "raw", trust=True)
    assert "HTTP 500 Internal Server Error" in capsys.readouterr().out
    raw_is_clean(tmp_path / "raw")


def test_a_stalled_server_times_out(synthetic_dir, tmp_path):
    class Stalled(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            time.sleep(1.5)

    with FileServer(synthetic_dir, Stalled) as stalled, pytest.raises(DataError, match="no answer within 0.3 s"):
        fetch_dataset("mnist", [stalled.url], tmp_path / "raw", timeout=0.3, trust=True)


def test_verify_accepts_real_shapes_only(synthetic_dir):
    spec = data.file_specs("mnist")[0]
    assert verify_idx(synthetic_dir / spec.name, spec).shape == (60000, 28, 28)
    with pytest.raises(DataError, match="expected labels"):
        verify_idx(synthetic_dir / spec.name, data.FileSpec(spec.name, "labels", 60000, ""))


def test_prepare_scales_to_unit_interval_and_limits(synthetic_dir):
    split = prepare_split(synthetic_dir, "test", limit=50)
    assert split["x"].shape == (50, 784) and split["x"].dtype == torch.float32
    assert split["x"].min() >= 0 and split["x"].max() == 1.0
    raw = read_idx(synthetic_dir / "t10k-images-idx3-ubyte.gz")[:50].reshape(50, -1)
    torch.testing.assert_close(split["x"], torch.from_numpy(raw / 255.0).float())
    assert split["y"].dtype == torch.int64


def test_prepare_without_download_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="dvc repro download"):
        prepare_split(tmp_path, "train")


def test_an_unreachable_source_is_asked_once_and_the_error_lists_it(tmp_path):
    dead = closed_port_url()
    with pytest.raises(DataError) as err:
        fetch_dataset("mnist", [dead], tmp_path / "raw", trust=True)
    message = str(err.value)
    assert FILES[0] in message and dead in message and "data.mirrors" in message
    assert "cannot reach" in message


def test_unreachable_source_is_skipped_for_later_files(synthetic_dir, tmp_path, capsys):
    dead = closed_port_url()
    with FileServer(synthetic_dir) as good:
        fetch_dataset("mnist", [dead, good.url], tmp_path / "raw", trust=True)
    assert capsys.readouterr().out.count(f"from {dead} failed") == 1


def test_static_binarisation_thresholds_both_splits_at_one_half(synthetic_dir):
    grey = prepare_split(synthetic_dir, "test", limit=50)["x"]
    for split in ("train", "test"):
        binary = prepare_split(synthetic_dir, split, limit=50, binarize="static")
        assert set(binary) == {"x", "y"} and set(binary["x"].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(prepare_split(synthetic_dir, "test", limit=50, binarize="static")["x"],
                               (grey > 0.5).float())


def test_dynamic_binarisation_flags_the_grey_training_split_and_draws_the_test_split_once(synthetic_dir):
    train = prepare_split(synthetic_dir, "train", limit=50, binarize="dynamic")
    assert bool(train["dynamic"]) and torch.equal(train["x"], prepare_split(synthetic_dir, "train", limit=50)["x"])
    test, again = (prepare_split(synthetic_dir, "test", limit=50, binarize="dynamic")["x"] for _ in range(2))
    assert set(test.unique().tolist()) <= {0.0, 1.0} and torch.equal(test, again)  # one fixed draw
    grey = prepare_split(synthetic_dir, "test", limit=50)["x"]
    assert ((grey == 0) <= (test == 0)).all() and ((grey == 1) <= (test == 1)).all()


def known_as(monkeypatch, synthetic_dir, dataset: str) -> dict[str, str]:
    """Register the synthetic files' decompressed SHA-256 as `dataset`'s known content; returns them by name."""
    import hashlib

    from latentfit.data.idx import idx_bytes

    table = {name: hashlib.sha256(idx_bytes(synthetic_dir / name)).hexdigest() for name in FILES}
    monkeypatch.setattr(data, "IDX_SHA256", {(dataset, name): sha for name, sha in table.items()})
    return table


def test_a_recompressed_copy_of_known_content_passes_the_checksum_check(synthetic_dir, tmp_path, monkeypatch):
    known_as(monkeypatch, synthetic_dir, "mnist")
    mirror = tmp_path / "recompressed"
    mirror.mkdir()
    for name in FILES:  # what Debian did: the same IDX bytes, another gzip stream (another .gz MD5)
        (mirror / name).write_bytes(gzip.compress(gzip.decompress((synthetic_dir / name).read_bytes()), 1))
    paths = fetch_dataset("mnist", [str(mirror)], tmp_path / "raw")
    assert {how for _, how in paths} == {"IDX SHA-256 (re-compressed)"}


def test_another_datasets_files_are_refused_naming_both_datasets(synthetic_dir, tmp_path, monkeypatch):
    known_as(monkeypatch, synthetic_dir, "fashion-mnist")
    for trust in (False, True):  # data.verify: shape does not let a known other dataset through
        with pytest.raises(DataError) as err:
            fetch_dataset("mnist", [str(synthetic_dir)], tmp_path / "raw", trust=trust)
        message = str(err.value)
        assert f"{synthetic_dir / FILES[0]} is fashion-mnist's {FILES[0]}, not mnist's {FILES[0]}" in message
        assert "data.dataset=fashion-mnist" in message
        assert not (tmp_path / "raw" / FILES[0]).exists()


def test_unknown_content_is_refused_unless_the_user_trusts_it(synthetic_dir, tmp_path):
    with pytest.raises(DataError) as err:
        fetch_dataset("mnist", [str(synthetic_dir)], tmp_path / "raw")
    message = str(err.value)
    assert f"{synthetic_dir / FILES[0]} is not mnist's {FILES[0]}" in message and "data.verify: shape" in message
    assert fetch_dataset("mnist", [str(synthetic_dir)], tmp_path / "raw", trust=True)


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_debians_fashion_mnist_passes_as_itself_and_is_refused_as_mnist(tmp_path):
    paths = fetch_dataset("fashion-mnist", [str(DEBIAN_FASHION)], tmp_path / "raw")
    assert {how for _, how in paths} == {"IDX SHA-256 (re-compressed)"}
    with pytest.raises(DataError, match="is fashion-mnist's train-images-idx3-ubyte.gz, not mnist's"):
        fetch_dataset("mnist", [str(DEBIAN_FASHION)], tmp_path / "raw2")


# ---------------------------------------------------------------- one source per download (data.verify: shape)
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = (spec.name for spec in data.file_specs("mnist"))


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """A second synthetic dataset, standing in for Fashion-MNIST (the synthetic_dir one stands in for MNIST)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("fashion"), seed=7)


def idx_sha(path):
    import hashlib

    from latentfit.data.idx import idx_bytes

    return hashlib.sha256(idx_bytes(path)).hexdigest()


@pytest.fixture
def two_known_datasets(monkeypatch, synthetic_dir, fashion_dir):
    """The synthetic files known as MNIST's (all but its training images, as in the real table) and the
    second set known as Fashion-MNIST's."""
    table = {("mnist", name): idx_sha(synthetic_dir / name) for name in FILES if name != TRAIN_IMAGES}
    table |= {("fashion-mnist", name): idx_sha(fashion_dir / name) for name in FILES}
    monkeypatch.setattr(data, "IDX_SHA256", table)


def recompressed(path):
    return gzip.compress(gzip.decompress(path.read_bytes()), 1)


def contents(raw):
    return {path.name: gzip.decompress(path.read_bytes()) for path in raw.iterdir()}


@pytest.mark.parametrize("served", ["directory", "http"])
def test_a_mirror_with_a_file_of_another_dataset_is_not_used_at_all(synthetic_dir, fashion_dir, tmp_path, monkeypatch,
                                                                      two_known_datasets, capsys, served):
    """The issue's case: a Fashion-MNIST mirror whose training images are MNIST's, re-compressed (no known
    checksum: accepted by shape), and whose test labels are MNIST's (identified). Per-file fallback would pair
    MNIST images with Fashion labels, every check passing; now the mirror is not used at all."""
    mirror = tmp_path / "mixed"
    shutil.copytree(fashion_dir, mirror)
    (mirror / TRAIN_IMAGES).write_bytes(recompressed(synthetic_dir / TRAIN_IMAGES))
    shutil.copyfile(synthetic_dir / TEST_LABELS, mirror / TEST_LABELS)
    with FileServer(mirror) as mirror_server, FileServer(fashion_dir) as official:
        source = str(mirror) if served == "directory" else mirror_server.url
        origin = str(mirror / TEST_LABELS) if served == "directory" else mirror_server.url + TEST_LABELS
        for trust in (True, False):
            raw = tmp_path / f"raw-{trust}"
            # no other source: the download fails, naming the source, the file and what it is
            with pytest.raises(DataError) as err:
                fetch_dataset("fashion-mnist", [source], raw, trust=trust)
            message = str(err.value)
            if trust:
                assert f"{origin} is mnist's {TEST_LABELS}, not fashion-mnist's {TEST_LABELS}" in message
                assert f"no file of {source} is used" in message
            else:  # checksums: the unknown training images are refused already
                assert f"is not fashion-mnist's {TRAIN_IMAGES}" in message
            assert not raw.exists()
            raw_is_clean(raw)
            # with the official source after it: all four files from there, none from the mirror
            monkeypatch.setattr(data, "official_mirrors", lambda dataset, url=official.url: [url])
            capsys.readouterr()
            paths = fetch_dataset("fashion-mnist", [source], raw, trust=trust)
            monkeypatch.setattr(data, "official_mirrors", lambda dataset: [])
            assert contents(raw) == contents(fashion_dir)
            assert {how for _, how in paths} == {"IDX SHA-256 (re-compressed)"}
            if trust:
                log = capsys.readouterr().out
                assert f"is mnist's {TEST_LABELS}" in log and f"no file of {source} is used" in log


def test_under_verify_shape_a_mirror_missing_a_file_is_not_used_at_all(synthetic_dir, fashion_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(fashion_dir, partial)
    (partial / TEST_LABELS).unlink()
    paths = fetch_dataset("mnist", [str(partial), str(synthetic_dir)], tmp_path / "raw", trust=True)
    assert contents(tmp_path / "raw") == contents(synthetic_dir)  # all four from the second mirror
    assert [path for path, _ in paths] == [tmp_path / "raw" / name for name in FILES]


def test_under_checksums_each_file_may_come_from_another_source(synthetic_dir, tmp_path, monkeypatch):
    """Each file's content is pinned by its checksum, so taking them from several sources pairs nothing wrongly."""
    known_as(monkeypatch, synthetic_dir, "mnist")
    first, second = tmp_path / "first", tmp_path / "second"
    for mirror, names in ((first, FILES[:3]), (second, FILES[3:])):
        mirror.mkdir()
        for name in names:
            (mirror / name).write_bytes(recompressed(synthetic_dir / name))
    fetch_dataset("mnist", [str(first), str(second)], tmp_path / "raw")
    assert contents(tmp_path / "raw") == contents(synthetic_dir)


@pytest.mark.parametrize("trust", [False, True])
def test_a_file_of_the_other_split_is_named_as_such(synthetic_dir, tmp_path, monkeypatch, trust):
    known_as(monkeypatch, synthetic_dir, "mnist")
    mirror = broken_copy(synthetic_dir, tmp_path, TRAIN_LABELS, lambda p: shutil.copyfile(synthetic_dir / TEST_LABELS, p))
    with pytest.raises(DataError) as err:
        fetch_dataset("mnist", [str(mirror)], tmp_path / "raw", trust=trust)
    message = str(err.value)
    assert (f"{mirror / TRAIN_LABELS} is mnist's {TEST_LABELS} (its test split's labels), not mnist's {TRAIN_LABELS} "
            "(its train split's labels)") in message
    assert "data.dataset" not in message  # it is the right dataset already


def test_a_failed_download_leaves_the_previous_files_as_they_were(synthetic_dir, fashion_dir, tmp_path):
    raw = tmp_path / "raw"
    fetch_dataset("mnist", [str(synthetic_dir)], raw, trust=True)
    partial = tmp_path / "partial"
    shutil.copytree(fashion_dir, partial)
    (partial / TEST_LABELS).unlink()
    with pytest.raises(DataError):
        fetch_dataset("mnist", [str(partial)], raw, trust=True)
    assert contents(raw) == contents(synthetic_dir)
    raw_is_clean(raw)
