from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import centerclip
from centerclip import CenterCLIPConfig, WeightsUnavailableError, create_model, save_checkpoint


def random_video(model: centerclip.VideoCLIP, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = model.image_size
    frames = torch.randint(
        0, 256, (batch, model.config.frames, size, size, 3), dtype=torch.uint8, generator=generator
    )
    return model.preprocess(frames)


def per_frame_mean_pooling(model: centerclip.VideoCLIP, frames: torch.Tensor) -> torch.Tensor:
    """Plain open_clip: every frame through the unpatched image forward, unit frame embeddings
    averaged, normalised again."""
    batch, count = frames.shape[:2]
    per_frame = model.clip.encode_image(frames.flatten(0, 1), normalize=True)
    return F.normalize(per_frame.reshape(batch, count, -1).mean(dim=1), dim=-1)


@pytest.mark.parametrize("method", ["kmedoids", "spectral", "none"])
def test_removing_nothing_equals_plain_clip_with_mean_pooling(method: str) -> None:
    # tiny: 64 px, 8 px patches -> N = 64 tokens per frame; S = T and K = N keep every token.
    model = create_model("tiny", frames=4, segments=4, centers=64, method=method)
    frames = random_video(model)
    with torch.no_grad():
        expected = per_frame_mean_pooling(model, frames)
        assert torch.allclose(model.encode_video(frames), expected, atol=1e-5)


def test_token_count_after_the_cluster_block_is_segments_times_one_plus_centers() -> None:
    model = create_model("tiny", frames=8, cluster_block=2, segments=4, centers=20)
    shapes: list[tuple[int, ...]] = []
    block = model.clip.visual.transformer.resblocks[2]
    handle = block.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        model.encode_video(random_video(model, batch=3))
    handle.remove()
    assert shapes == [(3 * 4, 1 + 20, 128)]


def test_segment_cls_is_the_mean_of_its_frames_cls() -> None:
    x = torch.randn(2, 6, 1 + 10, 8)
    reduced = centerclip.segment_tokens(x, CenterCLIPConfig(frames=6, segments=3, centers=4))
    assert reduced.shape == (2, 3, 5, 8)
    assert torch.allclose(reduced[:, :, 0], x[:, :, 0].reshape(2, 3, 2, 8).mean(dim=2))
    kept = reduced[:, :, 1:].reshape(2 * 3, 4, 8)
    patches = x[:, :, 1:].reshape(2 * 3, 20, 8)
    for segment, tokens in zip(patches, kept, strict=True):
        assert all((segment == token).all(dim=1).any() for token in tokens)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"frames": 8, "segments": 3}, "must divide into segments"),
        ({"frames": 8, "segments": 4, "centers": 129}, "exceeds the 128 patch tokens"),
        ({"cluster_block": 4}, "cluster_block must be in 0..3"),
        ({"cluster_block": -1}, "cluster_block must be in 0..3"),
        ({"method": "ward"}, "method must be one of"),
        ({"distance": "l1"}, "distance must be one of"),
    ],
)
def test_invalid_settings_raise_a_clear_value_error(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("tiny", **overrides)


def test_unknown_setting_and_unknown_preset_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        create_model("tiny", clusters=3)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        create_model("nope")


def test_outputs_are_unit_norm_and_the_right_size() -> None:
    model = create_model("tiny")
    with torch.no_grad():
        video, segments = model.encode_video(random_video(model, batch=3), return_segments=True)
        text = model.encode_text(model.tokenize(["a red circle", "two blue squares", "x"]))
    assert video.shape == (3, model.embed_dim) and segments.shape == (3, 4, model.embed_dim)
    assert text.shape == (3, model.embed_dim)
    for embeddings in (video, segments, text):
        assert torch.allclose(embeddings.norm(dim=-1), torch.ones(embeddings.shape[:-1]), atol=1e-5)


def test_untrained_models_are_identical_across_builds_and_leave_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = create_model("tiny")
    assert torch.equal(torch.rand(1), before)
    second = create_model("tiny")
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert first.model_id == second.model_id
    assert "untrained" in first.model_id


def test_model_id_names_preset_weights_and_settings() -> None:
    base = create_model("tiny")
    assert base.model_id.startswith("tiny@untrained-seed0/T8-B2-S4-K32-kmedoids")
    assert create_model("tiny", method="spectral").model_id != base.model_id
    assert create_model("tiny", method="none").model_id == "tiny@untrained-seed0/T8-meanP"


def test_checkpoint_round_trip_gives_identical_embeddings(tmp_path: Path) -> None:
    model = create_model("tiny", centers=16)
    with torch.no_grad():
        model.clip.logit_scale.add_(0.5)  # any change makes these weights differ from untrained
    path = save_checkpoint(model, tmp_path / "model.pt", step=7)
    loaded = create_model(str(path))
    assert loaded.config == model.config
    assert loaded.model_id != create_model("tiny", centers=16).model_id
    assert loaded.model_id.startswith("tiny@sha256:")
    frames = random_video(model)
    tokens = model.tokenize(["a green triangle moving left"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(frames), model.encode_video(frames))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
    # The same file as weights of the preset gives the same model.
    as_weights = create_model("tiny", weights=str(path), centers=16)
    assert as_weights.model_id == loaded.model_id


def test_open_clip_state_dict_loads_as_weights(tmp_path: Path) -> None:
    model = create_model("tiny")
    with torch.no_grad():
        model.clip.visual.proj.mul_(2.0)
    torch.save(model.clip.state_dict(), tmp_path / "open_clip_weights.pt")
    loaded = create_model("tiny", weights=str(tmp_path / "open_clip_weights.pt"))
    assert torch.equal(loaded.clip.visual.proj, model.clip.visual.proj)
    assert "sha256:" in loaded.model_id


def test_missing_weights_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        WeightsUnavailableError, match="preset 'tiny': weights file .* does not exist"
    ):
        create_model("tiny", weights=str(tmp_path / "absent.pt"))
    with pytest.raises(WeightsUnavailableError, match="preset 'tiny' has no pretrained weights"):
        create_model("tiny", weights="pretrained")


def test_unreachable_pretrained_tag_fails_with_the_remedy() -> None:
    # HF_HUB_OFFLINE=1 (conftest): the weights are in no local cache, so loading must fail at
    # once with a message that names the preset and the way out.
    with pytest.raises(WeightsUnavailableError, match="ViT-B-32-center.*--weights PATH"):
        create_model("ViT-B-32-center", weights="pretrained")


def test_preprocess_resizes_and_normalises_on_the_model_device() -> None:
    model = create_model("tiny")
    frames = torch.full((1, 8, 90, 120, 3), 255, dtype=torch.uint8)
    x = model.preprocess(frames)
    assert x.shape == (1, 8, 3, 64, 64) and x.dtype == torch.float32
    white = (1.0 - model.pixel_mean) / model.pixel_std
    assert torch.allclose(x, white.expand_as(x), atol=1e-4)


def test_presets_are_registered() -> None:
    names = centerclip.list_presets()
    assert {"ViT-B-32-center", "ViT-B-16-center", "tiny"} <= set(names)
    b32 = centerclip.get_preset("ViT-B-32-center")
    assert (b32.settings.cluster_block, b32.settings.segments, b32.settings.centers) == (6, 4, 49)
    assert b32.pretrained == "openai"
    assert centerclip.get_preset("ViT-B-16-center").settings.centers == 160


QUERY_BATCHES = {
    "one short query": ["a dog"],
    "mixed lengths": ["a red circle moving left", "two", "a small green triangle on grey, slowly"],
    "an empty query": ["", "a cat jumps over a fence"],
    "a query past the context": ["a very long caption " * 40, "short"],
}


@pytest.mark.parametrize("preset", ["tiny", "ViT-B-32-center"])
@pytest.mark.parametrize("batch", list(QUERY_BATCHES))
def test_text_encoded_up_to_the_last_end_of_text_equals_the_full_context(
    preset: str, batch: str
) -> None:
    """The causal text tower read at the end-of-text token: positions after the batch's last
    one change nothing, so the shortened encode equals open_clip's full-context one."""
    model = _text_model(preset)
    tokens = model.tokenize(QUERY_BATCHES[batch])
    with torch.inference_mode():
        full = model.clip.encode_text(tokens, normalize=True)
        shortened = model.encode_text(tokens)
    assert shortened.shape == full.shape
    torch.testing.assert_close(shortened, full, atol=1e-5, rtol=1e-5)


def test_text_positions_read_are_the_end_of_text_tokens() -> None:
    model = _text_model("tiny")
    tokens = model.tokenize(["a dog", "a dog runs"])
    positions = centerclip.model.pooled_text_positions(tokens, model.clip.text_pool_type)
    eot = model.tokenizer.eot_token_id
    assert tokens[0, positions[0]] == eot and tokens[1, positions[1]] == eot
    assert positions.tolist() == [3, 4]  # start-of-text, the words, end-of-text


@functools.cache
def _text_model(preset: str) -> centerclip.VideoCLIP:
    """One random-initialised model per preset for the text tests (ViT-B/32 takes seconds)."""
    return create_model(preset).eval()


# An open_clip config with a timm vision tower (open_clip's ``TimmModel``), small and untrained.
TIMM_TOWER_PRESET = {
    "open_clip_config": {
        "embed_dim": 64,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_pool": "",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 1},
    },
    "settings": {"frames": 4, "cluster_block": 2, "segments": 2, "centers": 8},
}  # fmt: skip


def test_importing_centerclip_defers_torchs_compiler_and_timm_which_still_work(
    tmp_path: Path,
) -> None:
    """``centerclip`` imports open_clip without ``torch._dynamo`` and ``timm`` (most of every
    encoding process's import, ``bench/startup.py``); what torchvision bound meanwhile still
    reaches the real compiler, and a config with a timm tower still gets its tower built, by
    open_clip called directly and through ``create_model``."""
    preset = tmp_path / "timm-tower.json"
    preset.write_text(json.dumps(TIMM_TOWER_PRESET))
    probe = """
import sys
import centerclip, torch
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
assert "timm" not in sys.modules, "timm was imported"
import torch._dynamo  # the real compiler, imported after centerclip
roi_align = sys.modules["torchvision.ops.roi_align"]
assert roi_align.is_compile_supported("cpu") is True
assert isinstance(sys.modules["torch._dynamo.utils"].counters, dict)
import json, open_clip
config = json.load(open(sys.argv[1]))["open_clip_config"]
assert type(open_clip.CLIP(**config).visual).__name__ == "TimmModel"  # open_clip called directly
assert "timm" in sys.modules
name = centerclip.register_preset(sys.argv[1])
try:
    centerclip.create_model(name)
except TypeError as err:  # CenterCLIP patches open_clip's own ViT, not a timm tower
    assert "got TimmModel" in str(err), err
else:
    raise AssertionError("a timm tower was patched")
assert "timm" in sys.modules
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", probe, str(preset)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
