"""Encoder settings and the preset registry.

A preset is a small JSON file in ``centerclip/presets/`` (or one a user registers with
:func:`register_preset`) naming an open_clip architecture, optional pretrained weights, and the
CenterCLIP settings. Weights are separate from architecture, as in open_clip.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

Method = Literal["kmedoids", "spectral", "none"]
Distance = Literal["euclidean", "cosine"]
Affinity = Literal["heat", "knn"]

METHODS: tuple[str, ...] = ("kmedoids", "spectral", "none")
DISTANCES: tuple[str, ...] = ("euclidean", "cosine")
AFFINITIES: tuple[str, ...] = ("heat", "knn")

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class CenterCLIPConfig:
    """How a video goes through the vision tower.

    ``frames`` (T) frames per video; blocks ``1..cluster_block`` (b) run per frame; then the frames
    are cut into ``segments`` (S) contiguous segments, the patch tokens of each segment are
    clustered down to ``centers`` (K) real tokens, and the remaining blocks run per segment.
    ``method="none"`` is plain CLIP over every frame with mean pooling (CLIP4Clip meanP).
    """

    frames: int = 12
    cluster_block: int = 6
    segments: int = 4
    centers: int = 49
    method: Method = "kmedoids"
    distance: Distance = "euclidean"
    max_iters: int = 20
    affinity: Affinity = "heat"
    sigma: float | None = None
    neighbors: int = 10

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {AFFINITIES}, got {self.affinity!r}")
        if self.method == "none":
            return
        if self.segments < 1 or self.frames % self.segments:
            raise ValueError(
                f"frames ({self.frames}) must divide into segments ({self.segments}) "
                "contiguous segments of equal length"
            )
        if self.centers < 1:
            raise ValueError(f"centers must be at least 1, got {self.centers}")
        if self.max_iters < 1:
            raise ValueError(f"max_iters must be at least 1, got {self.max_iters}")

    @property
    def clustered(self) -> bool:
        return self.method != "none"

    @property
    def output_segments(self) -> int:
        """Segment embeddings per video: S when clustering, one per frame for ``method="none"``."""
        return self.segments if self.clustered else self.frames

    def check_against(self, *, blocks: int, tokens_per_frame: int) -> None:
        """Raise ``ValueError`` unless these settings fit a ViT of ``blocks`` blocks with
        ``tokens_per_frame`` patch tokens (N, without the CLS token) per frame."""
        if not self.clustered:
            return
        if not 0 <= self.cluster_block < blocks:
            raise ValueError(
                f"cluster_block must be in 0..{blocks - 1} for a {blocks}-block ViT "
                f"(at least one block must run on the clustered tokens), got {self.cluster_block}"
            )
        segment_tokens = self.frames // self.segments * tokens_per_frame
        if self.centers > segment_tokens:
            raise ValueError(
                f"centers ({self.centers}) exceeds the {segment_tokens} patch tokens of a segment "
                f"({self.frames // self.segments} frames x {tokens_per_frame} tokens)"
            )

    def tag(self) -> str:
        """Short identity of the settings that change embeddings, used inside ``model_id``."""
        if not self.clustered:
            return f"T{self.frames}-meanP"
        parts = [
            f"T{self.frames}",
            f"B{self.cluster_block}",
            f"S{self.segments}",
            f"K{self.centers}",
            self.method,
            self.distance,
            f"it{self.max_iters}",
        ]
        if self.method == "spectral":
            parts.append(
                f"{self.affinity}-{self.sigma if self.affinity == 'heat' else self.neighbors}"
            )
        return "-".join(str(part) for part in parts)

    def with_overrides(self, **overrides: Any) -> CenterCLIPConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; settings are {sorted(known)}")
        return replace(self, **overrides)


@dataclass(frozen=True)
class Preset:
    """An architecture (an open_clip model name or an inline open_clip config), optional
    pretrained weights, and the CenterCLIP settings."""

    name: str
    settings: CenterCLIPConfig
    open_clip_model: str | None = None
    open_clip_config: dict[str, Any] | None = field(default=None, hash=False)
    pretrained: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if (self.open_clip_model is None) == (self.open_clip_config is None):
            raise ValueError(
                f"preset {self.name!r} must name exactly one of open_clip_model or open_clip_config"
            )

    def to_dict(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["settings"] = asdict(self.settings)
        return spec

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Preset:
        spec = dict(spec)
        spec["settings"] = CenterCLIPConfig(**spec.get("settings", {}))
        return cls(**spec)


_REGISTRY: dict[str, Path] = {}


def _scan_builtin_presets() -> None:
    for path in sorted(PRESET_DIR.glob("*.json")):
        _REGISTRY.setdefault(path.stem, path)


def register_preset(path: str | Path) -> str:
    """Add a user's preset JSON file to the registry; returns its name (the file's stem)."""
    path = Path(path)
    Preset.from_dict({"name": path.stem, **json.loads(path.read_text())})
    _REGISTRY[path.stem] = path
    return path.stem


def list_presets() -> list[str]:
    _scan_builtin_presets()
    return sorted(_REGISTRY)


def get_preset(name: str) -> Preset:
    _scan_builtin_presets()
    if name not in _REGISTRY:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return Preset.from_dict({"name": name, **json.loads(_REGISTRY[name].read_text())})
