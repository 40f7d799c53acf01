"""HPS v2 / v2.1 (Wu et al., 2023): human preference score, an open_clip ViT-H-14 fine-tuned on HPD v2.

The score is the hpsv2 package's: the cosine of the L2-normalised image and text features of the CLIP model (no
logit scale), after its evaluation transform (the image's longer side resized to 224 px, bicubic, the rest padded
with black to 224 x 224, OpenAI CLIP's mean and std). open_clip requires torchvision, so the model here is
transformers' CLIPModel, built from the open_clip model config and filled from the checkpoint's open_clip state
dict by a key map: the same architecture (pre-norm ViT and text transformer, exact GELU, class-token and
end-of-text pooling, bias-free projections). The preprocessing is written in torch, so the reward is
differentiable.

The checkpoint is ``HPS_v2.1_compressed.pt`` (or ``HPS_v2_compressed.pt``, ``version=v2.0``) of the hub repo
``xswu/HPSv2``; the tokenizer is open_clip's, as laion's ViT-H-14 ships it in transformers' format.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from genrl.errors import GenrlError
from genrl.plugins import describe
from genrl.rewards.clip import load_pretrained

NAME = "hpsv2"
HUB_REPO = "xswu/HPSv2"
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# open_clip's model config for ViT-H-14 (open_clip/model_configs/ViT-H-14.json), the architecture of HPS v2 and v2.1.
VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}
_VISION_KEYS = {"image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}


def skipped_init() -> Any:
    """A context in which transformers models skip their random initialisation (every weight is loaded after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # another transformers layout: initialise, only slower
        return contextlib.nullcontext()
    return no_init_weights()


def fetch_hub_file(repo: str, filename: str, reward: str, option: str) -> str:
    """The local path of ``repo``'s ``filename`` (downloaded, or the hub cache's copy offline), or a one-line error."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception as exc:  # offline without a cached copy, no network, a missing repo: all need the same fix
        raise GenrlError(
            f"reward '{reward}' needs {filename} of the hub repo {repo}, which is not in the hub cache; download it "
            f"(huggingface-cli download {repo} {filename}) or pass the file: --reward '{reward}({option}=PATH)'"
        ) from exc


def load_state_dict(path: str, reward: str, option: str) -> dict[str, torch.Tensor]:
    """A PyTorch checkpoint's tensors (under ``state_dict`` if it has one), with a DDP ``module.`` prefix removed."""
    if not Path(path).is_file():
        raise GenrlError(f"reward '{reward}': no checkpoint file '{path}'; pass an existing file: {option}=PATH")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file, or one that pickles objects other than tensors (never unpickled here)
        raise GenrlError(f"reward '{reward}': cannot read the checkpoint '{path}' ({describe(exc)})") from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise GenrlError(f"reward '{reward}': '{path}' holds no state dict of tensors; pass the published checkpoint")
    return {k.removeprefix("module."): v for k, v in state.items()}


def clip_config(open_clip_config: dict[str, Any], tokenizer: Any) -> Any:
    """transformers' CLIPConfig for an open_clip model config (the subset that plain ViT CLIPs use)."""
    from transformers import CLIPConfig

    vision, text = open_clip_config.get("vision_cfg", {}), open_clip_config.get("text_cfg", {})
    unknown = (
        (set(open_clip_config) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"})
        | {f"vision_cfg.{k}" for k in set(vision) - _VISION_KEYS}
        | {f"text_cfg.{k}" for k in set(text) - _TEXT_KEYS}
    )
    if unknown:
        raise GenrlError(
            f"reward '{NAME}': the model config sets {sorted(unknown)}, which this plain-ViT CLIP does not build; "
            "use open_clip's ViT-H-14 config (the default)"
        )
    act = "quick_gelu" if open_clip_config.get("quick_gelu") else "gelu"
    width = vision["width"]
    return CLIPConfig(
        projection_dim=open_clip_config["embed_dim"],
        vision_config=dict(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            hidden_size=width,
            intermediate_size=int(width * vision.get("mlp_ratio", 4.0)),
            num_hidden_layers=vision["layers"],
            num_attention_heads=width // vision.get("head_width", 64),
            hidden_act=act,
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=text.get("vocab_size", 49408),
            hidden_size=text.get("width", 512),
            intermediate_size=int(text.get("width", 512) * text.get("mlp_ratio", 4.0)),
            num_hidden_layers=text.get("layers", 12),
            num_attention_heads=text.get("heads", 8),
            max_position_embeddings=text.get("context_length", 77),
            hidden_act=act,
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,  # the end-of-text token, whose features are the text's
            pad_token_id=tokenizer.pad_token_id,
        ),
    )


def _blocks(prefix: str, target: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's residual attention blocks -> transformers' CLIP encoder layers (in_proj split into q, k, v)."""
    out: dict[str, torch.Tensor] = {}
    layers = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    for i in sorted(layers):
        src, dst = f"{prefix}{i}.", f"{target}{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{src}attn.in_proj_{kind}"].chunk(3)
            out |= {f"{dst}self_attn.q_proj.{kind}": q, f"{dst}self_attn.k_proj.{kind}": k}
            out[f"{dst}self_attn.v_proj.{kind}"] = v
            for a, b in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[f"{dst}{b}.{kind}"] = state[f"{src}{a}.{kind}"]
    return out


def convert_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict (plain ViT, built-in text tower) as transformers' CLIPModel names it."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].T,  # open_clip multiplies x @ proj
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"],
    }
    for a, b in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("ln_final", "text_model.final_layer_norm"),
    ):
        out |= {f"{b}.{kind}": state[f"{a}.{kind}"] for kind in ("weight", "bias")}
    out |= _blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.", state)
    out |= _blocks("transformer.resblocks.", "text_model.encoder.layers.", state)
    return {k: v.float() for k, v in out.items()}


def pad_to_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's ResizeMaxSize (hpsv2's evaluation transform): the longer side to ``size`` (bicubic, antialiased,
    as torchvision resizes tensors), centred on a black ``size`` x ``size`` canvas. Differentiable."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new = (round(h * scale), round(w * scale))
    if new != (h, w):
        images = F.interpolate(images.float(), size=new, mode="bicubic", antialias=True, align_corners=False)
    pad_h, pad_w = size - new[0], size - new[1]
    return F.pad(images.float(), (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


class HPSv2:
    """HPS v2.1 (default) or v2.0: cos(image features, text features) of the fine-tuned open_clip ViT-H-14."""

    differentiable = True

    def __init__(
        self,
        checkpoint: str | None = None,
        version: str = "v2.1",
        tokenizer: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        config: str | None = None,
    ):
        if version not in CHECKPOINTS:
            raise GenrlError(f"reward '{NAME}': version '{version}' is not one of {', '.join(CHECKPOINTS)}")
        path = checkpoint or fetch_hub_file(HUB_REPO, CHECKPOINTS[version], NAME, "checkpoint")
        state = load_state_dict(path, NAME, "checkpoint")
        if config is None:
            architecture = VIT_H_14
        else:
            try:
                architecture = json.loads(Path(config).read_text())
            except (OSError, ValueError) as exc:
                raise GenrlError(f"reward '{NAME}': cannot read the model config '{config}' ({exc})") from exc
        from transformers import AutoTokenizer, CLIPModel

        self.tokenizer = load_pretrained(AutoTokenizer, tokenizer, NAME, "tokenizer")
        self.context_length = architecture.get("text_cfg", {}).get("context_length", 77)
        with skipped_init():  # ViT-H's 986M random numbers would take longer than loading them
            self.model = CLIPModel(clip_config(architecture, self.tokenizer))
        try:
            weights = convert_open_clip(state)
        except KeyError as exc:
            raise GenrlError(
                f"reward '{NAME}': '{path}' is not an open_clip CLIP checkpoint (it has no {exc}); "
                f"pass {CHECKPOINTS[version]} of {HUB_REPO}"
            ) from exc
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise GenrlError(
                f"reward '{NAME}': the checkpoint '{path}' does not fit the model config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); "
                "pass the config it was trained with: config=PATH"
            )
        self.model.eval().requires_grad_(False)
        self.image_size = self.model.config.vision_config.image_size
        self.mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        pixels = pad_to_square(images, self.image_size)
        return (pixels - self.mean.to(pixels)) / self.std.to(pixels)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        self.model.to(images.device)
        pixels = self.preprocess(images).to(self.model.dtype)
        image = self.model.get_image_features(pixel_values=pixels)
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        ).to(images.device)
        text = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        image, text = (F.normalize(getattr(t, "pooler_output", t).float(), dim=-1) for t in (image, text))
        return (image * text).sum(-1)
