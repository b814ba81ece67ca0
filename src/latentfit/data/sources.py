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

from latentfit.core.errors import DataError, SourceUnreachable
from latentfit.core.io import atomic_dir, atomic_path
from latentfit.data.idx import IMAGE_SHAPE, SPLITS, idx_bytes, read_idx

# torchvision's dataset classes carry the official mirrors and the published MD5 of every .gz file.
_TORCHVISION = {"mnist": tv_datasets.MNIST, "fashion-mnist": tv_datasets.FashionMNIST, "kmnist": tv_datasets.KMNIST}

# SHA-256 of the decompressed IDX bytes: what a mirror that re-compressed the files (Debian's Fashion-MNIST
# package does) still holds. Computed from the official files (MNIST's, whose .gz MD5s match torchvision's)
# and from Debian's dataset-fashion-mnist (Fashion-MNIST); the files not listed have only their .gz MD5.
IDX_SHA256 = {
    ("mnist", "t10k-images-idx3-ubyte.gz"): "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ("mnist", "train-labels-idx1-ubyte.gz"): "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ("fashion-mnist", "t10k-images-idx3-ubyte.gz"): "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"): "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ("fashion-mnist", "train-images-idx3-ubyte.gz"): "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ("fashion-mnist", "train-labels-idx1-ubyte.gz"): "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
}


@dataclass(frozen=True)
class FileSpec:
    name: str
    kind: str  # "images" | "labels"
    count: int
    md5: str  # of the official .gz
    dataset: str = ""
    idx_sha256: str | None = None  # of the decompressed bytes, where known
    split: str = ""  # "train" | "test"

    def describe(self) -> str:
        return f"{self.dataset}'s {self.name} (its {self.split} split's {self.kind})"


def file_specs(dataset: str) -> list[FileSpec]:
    md5 = dict(_TORCHVISION[dataset].resources)
    specs = []
    for split, (images, labels, count) in SPLITS.items():
        specs += [FileSpec(name, kind, count, md5[name], dataset, IDX_SHA256.get((dataset, name)), split)
                  for name, kind in ((images, "images"), (labels, "labels"))]
    return specs


def identify(gz_md5: str, idx_sha256: str) -> FileSpec | None:
    """The file of a known dataset with this content (by its .gz MD5, or its decompressed SHA-256), if any."""
    for dataset in _TORCHVISION:
        for spec in file_specs(dataset):
            if gz_md5 == spec.md5 or idx_sha256 == spec.idx_sha256:
                return spec
    return None


def check_identity(path: Path, raw: bytes, spec: FileSpec, origin: str, trust: bool) -> str:
    """That the file at `path` (fetched from `origin`, decompressed: `raw`) is `spec`'s file of its dataset: its
    .gz MD5 is the published one, or its decompressed bytes are the known ones. Content known to be another dataset's file
    is refused always; content the project has no checksum for only with `trust` (data.verify: shape).
    Returns how it was verified."""
    gz_md5 = hashlib.md5(path.read_bytes()).hexdigest()
    if gz_md5 == spec.md5:
        return "official MD5"
    sha = hashlib.sha256(raw).hexdigest()
    if sha == spec.idx_sha256:
        return "IDX SHA-256 (re-compressed)"
    other = identify(gz_md5, sha)
    if other is not None and other.dataset == spec.dataset:  # the right dataset, another of its files
        raise DataError(
            f"{origin} is {other.describe()}, not {spec.describe()}: the source holds {other.name} under the name {spec.name}. "
            f"Fix: put {spec.dataset}'s {spec.name} at {origin}, or take that source out of data.mirrors.")
    if other is not None:
        raise DataError(
            f"{origin} is {other.dataset}'s {other.name}, not {spec.dataset}'s {spec.name}: data.dataset is "
            f"'{spec.dataset}'. Fix: set data.dataset: {other.dataset} (`dvc exp run -S data.dataset="
            f"{other.dataset}`), or list a source of {spec.dataset}'s files under data.mirrors.")
    if trust:
        return "shape only (data.verify: shape)"
    known = f"its IDX content's SHA-256 {sha[:12]}... is not the known {spec.idx_sha256[:12]}..." \
        if spec.idx_sha256 else f"the project has no checksum of {spec.dataset}'s decompressed {spec.name} to check a " \
        "re-compressed copy against"
    raise DataError(
        f"{origin} is not {spec.dataset}'s {spec.name}: its .gz MD5 {gz_md5} is not the published {spec.md5}, and "
        f"{known}. Fix: replace {origin} with the official file; or, if you trust this copy (another dataset in "
        "the same format, your own files), set data.verify: shape to accept any file of the right shape (the "
        "choice shows in `dvc exp show`).")


def official_mirrors(dataset: str) -> list[str]:
    return list(_TORCHVISION[dataset].mirrors)


def verify_idx(path: str | Path, spec: FileSpec, raw: bytes | None = None) -> np.ndarray:
    """The file's array, checked against its split's count and kind (`raw`: its bytes, already decompressed)."""
    array = read_idx(path, raw)
    expect = (spec.count, *IMAGE_SHAPE) if spec.kind == "images" else (spec.count,)
    if array.shape != expect:
        raise DataError(f"{spec.name}: expected {spec.kind} of shape {expect}, found {array.shape}")
    if spec.kind == "labels" and array.max(initial=0) > 9:
        raise DataError(f"{spec.name}: labels must be digits 0-9, found {int(array.max())}")
    return array


# ---------------------------------------------------------------- fetching
def fetch_dataset(dataset: str, mirrors: list[str], dest: str | Path, timeout: float = 30.0,
                  trust: bool = False) -> list[tuple[Path, str]]:
    """Fetch and verify the four files of `dataset` into `dest`, trying `mirrors` then the official ones;
    returns each file with how its identity was checked.

    Every file is checked to be the named dataset's (`check_identity`; `trust`: data.verify is shape) and
    against its split's count, so image and label counts agree. Without `trust` every file's content is pinned
    by a checksum, so each may come from any source. With it a file no checksum pins is taken by its shape, so
    the four come from one source: one mirror, or else the official sources (their files always checked by
    MD5). A source with any file missing, damaged or identified as another file is then not used at all: no
    run pairs one source's images with another source's labels.
    `dest` is replaced whole (atomic_dir) once all four files are verified: it never holds a partial,
    unverified or unpaired file, and a failed download leaves it as it was. Raises DataError listing every
    source tried and why.
    """
    specs = file_specs(dataset)
    sources = [(m, False) for m in mirrors] + [(m, True) for m in official_mirrors(dataset)]
    # the groups of sources whose files one download may combine: under shape each mirror is one, the official
    # sources (every file checked by its MD5) another; under checksums all sources are one
    groups = ([[s] for s in sources if not s[1]] + [[s for s in sources if s[1]]]) if trust else [sources]
    tried: list[str] = []  # for each group that failed, its sources' failures on the file it lacked
    missing, refused = specs[0], False
    unreachable: dict[str, str] = {}  # sources that did not answer: not asked again for the other files
    with atomic_dir(dest) as tmp:
        for group in filter(None, groups):
            hows: list[str] = []
            for spec in specs:
                how, failures, refused_here = _fetch_file(group, spec, tmp, timeout, trust, unreachable)
                if how is None:
                    missing, refused, tried = spec, refused or refused_here, tried + failures
                    break
                hows.append(how)
            else:
                break  # all four from this group
            if trust and not group[0][1]:  # a mirror: none of its files is used unless all four are
                for spec in specs:
                    (tmp / spec.name).unlink(missing_ok=True)
                why = f"no file of {group[0][0]} is used: data.verify: shape takes all four from one source"
                tried.append(f"    so {why}")
                tqdm.write(f"[download] {why}")
        else:
            fix = ("(each refused file above says what to do)" if refused else
                   "Fix: put the four .gz files in a local directory (or serve them over http) and list it "
                   "under data.mirrors in params.yaml, e.g. `dvc exp run -S 'data.mirrors=[\"/path/to/dir\"]'`.")
            what = f"the four files of dataset '{dataset}' from any one source" if trust else \
                f"{missing.name} of dataset '{dataset}' from any source"
            raise DataError(f"could not get {what}:\n" + "\n".join(tried) + "\n" + fix)
    return [(Path(dest) / spec.name, how) for spec, how in zip(specs, hows, strict=True)]


def _fetch_file(group: list[tuple[str, bool]], spec: FileSpec, dest: Path, timeout: float, trust: bool,
                unreachable: dict[str, str]) -> tuple[str | None, list[str], bool]:
    """One file into `dest` from the first of `group`'s sources (each: its URL or path, and whether it is
    official) that has it intact. Returns how it was verified (None: no source had it), every source's failure,
    and whether any source had a file whose content was refused."""
    failures, refused = [], False
    for source, official in group:
        if source in unreachable:
            failures.append(f"  - {source}: skipped, unreachable earlier ({unreachable[source]})")
            continue
        try:
            return _fetch_one(source, spec, dest / spec.name, timeout, trust=trust and not official), failures, refused
        except DataError as err:
            if isinstance(err, SourceUnreachable):
                unreachable[source] = str(err)
            refused |= isinstance(err, RefusedFile)
            failures.append(f"  - {source}: {err}")
            tqdm.write(f"[download] {spec.name} from {source} failed: {err}")
    return None, failures, refused


class RefusedFile(DataError):
    """A source had the file, and its content is not the dataset's (damaged, truncated, or another dataset)."""


def _fetch_one(source: str, spec: FileSpec, target: Path, timeout: float, trust: bool) -> str:
    """Fetch one file from one source to `target` (atomically, only once verified); returns how it was verified.
    Errors about the file's content name its source (the URL or the mirror's path), not a temporary file."""
    with atomic_path(target) as tmp:
        if source.startswith(("http://", "https://")):
            origin = source.rstrip("/") + "/" + spec.name
            _download(origin, tmp, timeout)
        else:
            local = Path(source.removeprefix("file://")).expanduser() / spec.name
            origin = str(local)
            if not local.is_file():
                raise DataError(f"no file {local}")
            shutil.copyfile(local, tmp)
        try:
            raw = idx_bytes(tmp)  # decompressed once, for the identity and the shape checks
            how = check_identity(tmp, raw, spec, origin, trust)
            verify_idx(tmp, spec, raw)
        except DataError as err:
            message = str(err).replace(str(tmp), origin).replace(tmp.name, origin)
            message = message if origin in message else f"{origin}: {message}"
            if "Fix:" not in message:
                message += f". Fix: replace {origin} with an intact copy of the official file."
            raise RefusedFile(message) from None
    return how


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
