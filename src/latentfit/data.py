"""Datasets: registry and fetching with verification (the download stage's library)."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision import datasets as tv_datasets
from tqdm import tqdm

from .errors import DataError, SourceUnreachable
from .idx import IMAGE_SHAPE, SPLITS, read_idx
from .io import atomic_path

# torchvision's dataset classes carry the official mirrors and the published MD5 of every file.
_TORCHVISION = {"mnist": tv_datasets.MNIST, "fashion-mnist": tv_datasets.FashionMNIST, "kmnist": tv_datasets.KMNIST}


@dataclass(frozen=True)
class FileSpec:
    name: str
    kind: str  # "images" | "labels"
    count: int
    md5: str


def file_specs(dataset: str) -> list[FileSpec]:
    md5 = dict(_TORCHVISION[dataset].resources)
    specs = []
    for images, labels, count in SPLITS.values():
        specs += [FileSpec(images, "images", count, md5[images]), FileSpec(labels, "labels", count, md5[labels])]
    return specs


def official_mirrors(dataset: str) -> list[str]:
    return list(_TORCHVISION[dataset].mirrors)


def verify_idx(path: str | Path, spec: FileSpec) -> np.ndarray:
    array = read_idx(path)
    expect = (spec.count, *IMAGE_SHAPE) if spec.kind == "images" else (spec.count,)
    if array.shape != expect:
        raise DataError(f"{spec.name}: expected {spec.kind} of shape {expect}, found {array.shape}")
    if spec.kind == "labels" and array.max(initial=0) > 9:
        raise DataError(f"{spec.name}: labels must be digits 0-9, found {int(array.max())}")
    return array


# ---------------------------------------------------------------- fetching
def fetch_dataset(dataset: str, mirrors: list[str], dest: str | Path, timeout: float = 30.0) -> list[Path]:
    """Fetch and verify the four files of `dataset` into `dest`, trying `mirrors` then the official ones.

    Every file is checked against its split's count, so image and label counts agree.
    Each file goes to a temporary name and is renamed into place only once verified, so `dest`
    never holds a partial or unverified file. Raises DataError listing every source tried and why.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sources = [(m, False) for m in mirrors] + [(m, True) for m in official_mirrors(dataset)]
    paths: list[Path] = []
    unreachable: dict[str, str] = {}
    for spec in file_specs(dataset):
        failures = []
        for source, official in sources:
            if source in unreachable:
                failures.append(f"  - {source}: skipped, unreachable earlier ({unreachable[source]})")
                continue
            try:
                _fetch_one(source, spec, dest / spec.name, timeout, check_md5=official)
                break
            except DataError as err:
                if isinstance(err, SourceUnreachable):
                    unreachable[source] = str(err)
                failures.append(f"  - {source}: {err}")
                tqdm.write(f"[download] {spec.name} from {source} failed: {err}")
        else:
            raise DataError(
                f"could not get {spec.name} of dataset '{dataset}' from any source:\n" + "\n".join(failures)
                + "\nFix: put the four .gz files in a local directory (or serve them over http) and list it under"
                " data.mirrors in params.yaml, e.g. `dvc exp run -S 'data.mirrors=[\"/path/to/dir\"]'`."
            )
        paths.append(dest / spec.name)
    return paths


def _fetch_one(source: str, spec: FileSpec, target: Path, timeout: float, check_md5: bool) -> None:
    with atomic_path(target) as tmp:
        if source.startswith(("http://", "https://")):
            _download(source.rstrip("/") + "/" + spec.name, tmp, timeout)
        else:
            local = Path(source.removeprefix("file://")).expanduser() / spec.name
            if not local.is_file():
                raise DataError(f"no file {local}")
            shutil.copyfile(local, tmp)
        if check_md5:
            digest = hashlib.md5(tmp.read_bytes()).hexdigest()
            if digest != spec.md5:
                raise DataError(f"MD5 {digest} does not match the published {spec.md5}")
        verify_idx(tmp, spec)


def _download(url: str, path: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, leave=False) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and path.stat().st_size != total:
                raise DataError(f"{url}: connection closed after {path.stat().st_size} of {total} bytes")
    except urllib.error.HTTPError as err:
        raise DataError(f"HTTP {err.code} {err.reason} for {url}") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise SourceUnreachable(f"{url}: no answer within {timeout:g} s (data.timeout)") from err
        raise SourceUnreachable(f"cannot reach {url}: {err.reason}") from err
    except TimeoutError as err:
        raise SourceUnreachable(f"{url}: no answer within {timeout:g} s (data.timeout)") from err
    except (ConnectionError, OSError) as err:
        raise DataError(f"{url}: {err}") from err
