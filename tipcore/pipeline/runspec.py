"""RunSpec: the complete, typed description of one run, and the only thing the CLI and the app hand the engine.

A RunSpec names the private image (a gallery id, or an upload by the sha256 of its pixels, which are stored
next to the result as ``images.npy``), the model, the client's round, the defense and the attack with their
options, the threat model and the seed. ``result.json`` carries it whole, with a schema version, so that
``python -m tipcore rerun result.json`` repeats the run bit for bit (same device kind and library versions).

Pixels are validated here, once, at the edge: ``validate_pixels`` is what every path that brings its own
image goes through.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from tipcore import attacks, defenses
from tipcore.federation import models
from tipcore.common.config import from_dict
from tipcore.federation.fl import RoundConfig

SCHEMA_VERSION = 1
IMAGE_SHAPE = (32, 32, 3)  # what the bundled models take: 32x32 RGB, channels last, in [0, 1]


def validate_pixels(images: Any) -> np.ndarray:
    """A private batch as the engine takes it, float32 (B, 32, 32, 3) in [0, 1]; one (32, 32, 3) image is a
    batch of one. Raises a one-line ValueError saying what is wrong (shape, range, NaN)."""
    try:
        arrays = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"images must be a numeric array, got {type(images).__name__}") from exc
    if arrays.ndim == 3:
        arrays = arrays[None]
    if arrays.ndim != 4 or arrays.shape[1:] != IMAGE_SHAPE or arrays.shape[0] < 1:
        raise ValueError(f"images must be (32, 32, 3) or (B, 32, 32, 3) RGB, got shape {tuple(np.shape(images))} "
                         "(load files with tipcore.federation.data.load_image, which crops and resizes)")
    if not np.isfinite(arrays).all():
        raise ValueError("images contain NaN or infinite values")
    lo, hi = float(arrays.min()), float(arrays.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image values must be in [0, 1], got [{lo:g}, {hi:g}]"
                         + (" (8-bit data? divide by 255)" if hi > 1.0 and hi <= 255.0 else ""))
    return np.ascontiguousarray(arrays)


def pixel_digest(images: np.ndarray) -> str:
    """sha256 of a validated batch (its shape and float32 bytes): the identity of an upload."""
    arrays = validate_pixels(images)
    h = hashlib.sha256(str(arrays.shape).encode())
    h.update(arrays.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ImageSource:
    """Where the private batch comes from: gallery ids, or an upload identified by its pixels' sha256."""

    gallery_ids: tuple[str, ...] = ()
    upload_sha256: str | None = None

    @property
    def is_upload(self) -> bool:
        return self.upload_sha256 is not None


@dataclass(frozen=True)
class RunSpec:
    seed: int = 0
    model: str = "lenet"
    weights: str = "random"  # "random" (seeded init) or "digits" (bundled checkpoint)
    image_ids: tuple[str, ...] = ("cifar10-00",)  # gallery ids (empty for an upload)
    labels: tuple[int, ...] | None = None  # override the gallery labels (required for uploads)
    num_classes: int | None = None  # None: 10 for digits weights, else what the images' datasets need
    round: RoundConfig = field(default_factory=RoundConfig)
    defense: str = "none"
    defense_cfg: Mapping[str, Any] = field(default_factory=dict)
    attack: str = "idlg"
    attack_cfg: Mapping[str, Any] = field(default_factory=dict)
    labels_known: bool = False  # threat model: the server is told the labels
    report_every: int = 10
    device: str = "auto"
    upload_sha256: str | None = None  # an upload's pixels (pixel_digest); then image_ids is empty

    def __post_init__(self) -> None:
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model '{self.model}'; choose one of: {', '.join(models.MODELS)}")
        if self.weights not in models.WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(models.WEIGHTS)}, got '{self.weights}'")
        if self.defense not in defenses.DEFENSES:
            raise ValueError(f"unknown defense '{self.defense}'; choose one of: {', '.join(defenses.DEFENSES)}")
        if self.attack not in attacks.ATTACKS:
            raise ValueError(f"unknown attack '{self.attack}'; choose one of: {', '.join(attacks.ATTACKS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.num_classes is not None and not 2 <= self.num_classes <= models.MAX_CLASSES:
            raise ValueError(f"num_classes must be in [2, {models.MAX_CLASSES}], got {self.num_classes}")
        if not 1 <= self.report_every <= 100_000:
            raise ValueError(f"report_every must be in [1, 100000], got {self.report_every}")
        if self.upload_sha256 is not None:
            if self.image_ids:
                raise ValueError("a run on an uploaded image names no gallery ids")
            if self.labels is None:
                raise ValueError("labels are required for an uploaded image")
        elif not self.image_ids:
            raise ValueError("no image given: name at least one gallery id or upload an image")
        if self.labels is not None and any(isinstance(v, bool) or not isinstance(v, int) for v in self.labels):
            raise ValueError(f"labels must be integers, got {list(self.labels)}")
        # Validate option dicts now, so a bad value fails before any compute.
        from_dict(defenses.DEFENSES[self.defense].config_cls, self.defense_cfg, name="defense_cfg")  # unknown keys first
        from_dict(defenses.DEFENSES[self.defense].config_cls, self.defense_options(), name="defense_cfg")
        from_dict(attacks.ATTACKS[self.attack].config_cls, self.attack_cfg, name="attack_cfg")

    @property
    def image_source(self) -> ImageSource:
        return ImageSource(tuple(self.image_ids), self.upload_sha256)

    def defense_options(self) -> dict[str, Any]:
        """The defense's options as it runs: a clip-calibrated defense takes the round's clip."""
        return defenses.bind_round(self.defense, self.defense_cfg, self.round)

    def defense_config(self) -> Any:
        """The defense's config object, every option resolved (defaults included)."""
        return from_dict(defenses.DEFENSES[self.defense].config_cls, self.defense_options())

    def attack_config(self) -> Any:
        return from_dict(attacks.ATTACKS[self.attack].config_cls, self.attack_cfg)

    def for_upload(self, images: np.ndarray) -> "RunSpec":
        """This spec for an uploaded batch: its pixels' digest replaces any gallery id."""
        from dataclasses import replace

        return replace(self, image_ids=(), upload_sha256=pixel_digest(images))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_ids"] = list(self.image_ids)
        d["labels"] = None if self.labels is None else list(self.labels)
        d["defense_cfg"], d["attack_cfg"] = dict(self.defense_cfg), dict(self.attack_cfg)
        return d

    def resolved(self) -> dict[str, Any]:
        """Every option the defense and attack ran with, defaults included (for the record, not for rerunning:
        a later version's defaults may differ, and ``to_dict`` says what was asked)."""
        return {"defense": asdict(self.defense_config()), "attack": asdict(self.attack_config())}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, name: str = "") -> "RunSpec":
        """A RunSpec from plain data (``to_dict``'s form, e.g. read back from a result.json): every field,
        the round's included, checked by the typed parser that checks the CLI's flags (type, range,
        finiteness, nesting depth), then by the checks above."""
        return from_dict(cls, d, name=name)


def spec_from_result(result: Mapping[str, Any]) -> RunSpec:
    """The RunSpec a result.json recorded; a clear error for files of another schema or kind."""
    version = result.get("schema_version")
    if version is None or "spec" not in result:
        raise ValueError("this result.json holds no RunSpec (written by an older tipcore, or not an attack result)")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValueError(f"result.json has schema version {version!r}; this tipcore reads version {SCHEMA_VERSION}")
    return RunSpec.from_dict(result["spec"], name="spec")
