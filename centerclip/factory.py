"""``create_model``: presets, weights and checkpoints in, a :class:`VideoCLIP` out."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from centerclip.config import Preset, get_preset
from centerclip.model import VideoCLIP

CHECKPOINT_FORMAT = "centerclip-checkpoint-v1"
UNTRAINED_SEED = 0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights named by a preset are neither cached locally nor downloadable."""


def has_random_weights(model_id: str) -> bool:
    """Whether ``model_id`` (``preset@weights/settings``) names a preset's random
    initialisation (``untrained-seed0``) rather than trained weights: such a model's
    embeddings carry no meaning until it is trained."""
    return model_id.split("@", 1)[-1].startswith("untrained-")


def create_model(
    name: str,
    weights: str | None = None,
    *,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> VideoCLIP:
    """Build a CenterCLIP video encoder.

    Args:
        name: a preset name (see :func:`centerclip.list_presets`) or the path of a checkpoint
            written by :func:`save_checkpoint` (its preset and settings come with it).
        weights: ``None`` for a deterministic random initialisation (seed 0; its ``model_id``
            says ``untrained``), ``"pretrained"`` for the preset's open_clip pretrained tag, any
            other open_clip pretrained tag, or the path of a local weights file (an open_clip /
            OpenAI state dict or a checkpoint of this project).
        device: where the model is put.
        **overrides: settings by name (``frames``, ``cluster_block``, ``segments``, ``centers``,
            ``method``, ``distance``, ``max_iters``, ...), replacing the preset's.
    Returns:
        the model, in eval mode, with ``.config`` and ``.model_id``.
    """
    checkpoint: dict[str, Any] | None = None
    if _looks_like_path(name):
        checkpoint = _read_checkpoint(Path(name))
        preset = Preset.from_dict(checkpoint["preset"])
        weights_identity = (
            checkpoint.get("weights_identity") or f"sha256:{_file_digest(Path(name))}"
        )
        if weights is not None:
            raise ValueError("pass either a checkpoint as the model or weights, not both")
    else:
        preset = get_preset(name)
    settings = preset.settings.with_overrides(**overrides)

    if checkpoint is not None:
        clip = _build_clip(preset, seed=UNTRAINED_SEED)
        clip.load_state_dict(checkpoint["state_dict"])
    elif weights is None:
        clip = _build_clip(preset, seed=UNTRAINED_SEED)
        weights_identity = f"untrained-seed{UNTRAINED_SEED}"
    elif _looks_like_path(weights):
        clip, weights_identity = _load_weights_file(preset, Path(weights))
    else:
        tag = preset.pretrained if weights == "pretrained" else weights
        clip = _load_pretrained_tag(preset, tag)
        weights_identity = tag

    model = VideoCLIP(
        clip,
        config=settings,
        tokenizer=_tokenizer(preset),
        model_id=f"{preset.name}@{weights_identity}/{settings.tag()}",
        preset=preset,
    )
    return model.to(device).eval()


def save_checkpoint(model: VideoCLIP, path: str | Path, **extra: Any) -> Path:
    """Write ``model`` as one file that ``create_model(path)`` (and ``--model path``) loads.

    The file holds the preset (architecture), the settings, the open_clip state dict and a
    content digest of the weights, so its ``model_id`` changes whenever the weights do.
    ``extra`` entries (training step, metrics...) are stored beside them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu() for key, value in model.clip.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "preset": replace(model.preset, settings=model.config).to_dict(),
        "state_dict": state_dict,
        "weights_identity": f"sha256:{_state_dict_digest(state_dict)}",
        **extra,
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return path


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a centerclip checkpoint; to load open_clip weights into a preset use "
            "create_model(PRESET, weights=PATH)"
        )
    return payload


def _open_clip_config(preset: Preset) -> dict[str, Any]:
    if preset.open_clip_config is not None:
        return dict(preset.open_clip_config)
    config = open_clip.get_model_config(preset.open_clip_model)
    if config is None:
        raise ValueError(
            f"preset {preset.name!r}: open_clip knows no model {preset.open_clip_model!r}"
        )
    return config


def _build_clip(preset: Preset, *, seed: int) -> open_clip.CLIP:
    # A private RNG stream: every process (indexer, evaluator, each Ray actor) builds the same
    # untrained weights without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(**_open_clip_config(preset))


def _load_weights_file(preset: Preset, path: Path) -> tuple[open_clip.CLIP, str]:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"preset {preset.name!r}: weights file {path} does not exist; pass the path of an "
            "open_clip state dict or of a centerclip checkpoint"
        )
    clip = _build_clip(preset, seed=UNTRAINED_SEED)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain state dict; open_clip's loader decides below
        payload = None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        clip.load_state_dict(payload["state_dict"])
        return clip, payload["weights_identity"]
    open_clip.load_checkpoint(clip, str(path))
    return clip, f"sha256:{_file_digest(path)}"


def _load_pretrained_tag(preset: Preset, tag: str | None) -> open_clip.CLIP:
    if not tag or preset.open_clip_model is None:
        raise WeightsUnavailableError(
            f"preset {preset.name!r} has no pretrained weights; use weights=None (random "
            "initialisation) or the path of a weights file"
        )
    try:
        # Without a reachable hub, huggingface_hub retries for about a minute before it gives
        # up; in offline mode it answers from the local cache at once.
        with _hub_offline(not _hub_reachable()):
            return open_clip.create_model(preset.open_clip_model, pretrained=tag)
    except Exception as err:
        raise WeightsUnavailableError(
            f"preset {preset.name!r}: could not load open_clip pretrained weights "
            f"{preset.open_clip_model}/{tag} ({type(err).__name__}: {err}). Either run once where "
            "the internet is reachable so open_clip caches them, or download the weights file "
            "yourself and pass its path as the weights (--weights PATH)."
        ) from err


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urllib.parse.urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _tokenizer(preset: Preset) -> Any:
    if preset.open_clip_model is not None:
        return open_clip.get_tokenizer(preset.open_clip_model)
    context_length = _open_clip_config(preset)["text_cfg"]["context_length"]
    return SimpleTokenizer(context_length=context_length)


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def _state_dict_digest(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
