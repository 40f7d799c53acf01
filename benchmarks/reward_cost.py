"""Each built-in reward's cost per image: parameters and forward FLOPs of its published architecture, counted by
torch's FLOP counter on meta tensors (no weights, no download, no time: the same count on any machine). Time per
image follows from a device's throughput; none is timed here (no GPU on the development machine).

    python -m benchmarks.reward_cost

The architectures are the published checkpoints' configurations, written out below (facts from their config
files). Text towers count a prompt of ``PROMPT_TOKENS`` tokens; OCR decodes ``OCR_TOKENS`` tokens; GenEval's colour
classifier runs once per object whose colour the prompt asks for (its row counts one).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

PROMPT_TOKENS = 20
OCR_TOKENS = 16


def count(build: Callable[[], torch.nn.Module], run: Callable[[torch.nn.Module], object]) -> tuple[float, float]:
    """(millions of parameters, GFLOPs of ``run``) of the module ``build`` makes on the meta device."""
    with torch.device("meta"):
        module = build()
        with FlopCounterMode(display=False) as counter:
            run(module)
    return sum(p.numel() for p in module.parameters()) / 1e6, counter.get_total_flops() / 1e9


def _clip(config: dict) -> Callable[[], torch.nn.Module]:
    from transformers import CLIPModel

    from genrl.rewards.hps import clip_config

    tokens = types.SimpleNamespace(bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    return lambda: CLIPModel(clip_config(config, tokens))


def _image_and_text(model: torch.nn.Module, size: int) -> None:
    model.get_image_features(pixel_values=torch.zeros(1, 3, size, size))
    model.get_text_features(input_ids=torch.zeros(1, PROMPT_TOKENS, dtype=torch.long))


# open_clip's configurations (the hub's ViT-L-14 of OpenAI's CLIP is the same architecture as ViT-L/14 here).
VIT_L_14 = {
    "embed_dim": 768,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
}


def hpsv2() -> tuple[float, float]:
    from genrl.rewards.hps import VIT_H_14

    return count(_clip(VIT_H_14), lambda m: _image_and_text(m, 224))


def clip_l14_image_only() -> tuple[float, float]:
    """The aesthetic reward's CLIP image tower (its head, 768-1024-128-64-16-1, is under 1 MFLOP)."""
    return count(_clip(VIT_L_14), lambda m: m.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224)))


def clip_l14() -> tuple[float, float]:
    return count(_clip(VIT_L_14), lambda m: _image_and_text(m, 224))


def imagereward() -> tuple[float, float]:
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    # BLIP ViT-L/16 at 224 px; med_config.json's BERT-base with cross-attention to the image's tokens; 35 tokens.
    vision = BlipVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=16, layer_norm_eps=1e-6,
    )  # fmt: skip
    text = BlipTextConfig(
        vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=512, encoder_hidden_size=1024, is_decoder=True,
    )  # fmt: skip

    def build() -> torch.nn.Module:
        return torch.nn.ModuleDict({"vision": BlipVisionModel(vision), "text": BlipTextModel(text, False)})

    def run(m: torch.nn.Module) -> None:
        tokens = m["vision"](pixel_values=torch.zeros(1, 3, 224, 224)).last_hidden_state
        m["text"](input_ids=torch.zeros(1, 35, dtype=torch.long), encoder_hidden_states=tokens)

    return count(build, run)


def ocr() -> tuple[float, float]:
    from transformers import TrOCRConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    # microsoft/trocr-base-printed: a ViT-B/16 encoder at 384 px and TrOCR's 12-layer, 1024-wide decoder.
    encoder = ViTConfig(image_size=384, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
    decoder = TrOCRConfig(
        vocab_size=50265, d_model=1024, decoder_layers=12, decoder_attention_heads=16, decoder_ffn_dim=4096,
        cross_attention_hidden_size=768, is_decoder=True, add_cross_attention=True,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)

    def run(m: torch.nn.Module) -> None:  # the whole decoded sequence at once: what generation computes, cached
        m(pixel_values=torch.zeros(1, 3, 384, 384), decoder_input_ids=torch.zeros(1, OCR_TOKENS, dtype=torch.long))

    return count(lambda: VisionEncoderDecoderModel(config), run)


def owlv2() -> tuple[float, float]:
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    # google/owlv2-base-patch16-ensemble: a ViT-B/16 at 960 px (3,600 patches) and a 12-layer text tower.
    config = Owlv2Config(
        vision_config={"image_size": 960, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "intermediate_size": 3072},
        text_config={"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8, "intermediate_size": 2048},
        projection_dim=512,
    )  # fmt: skip

    def run(m: torch.nn.Module) -> None:  # two class names, as a two-object prompt asks
        ids = torch.zeros(2, 16, dtype=torch.long)
        m(input_ids=ids, pixel_values=torch.zeros(1, 3, 960, 960))  # no mask: a meta tensor has no values to read

    return count(lambda: Owlv2ForObjectDetection(config), run)


def shapes_alignment() -> tuple[float, float]:
    """The embedded shapes classifier, with its weights (it ships with genrl), on one 64 px image."""
    from genrl.prompts import load_prompts
    from genrl.rewards.shapes import ShapesAlignment

    reward, prompts, image = ShapesAlignment(), load_prompts("shapes_train")[:1], torch.rand(1, 3, 64, 64)
    reward(image, prompts, [{}])  # loads the classifier
    with FlopCounterMode(display=False) as counter:
        reward(image, prompts, [{}])
    modules = [m for m in vars(reward).values() if isinstance(m, torch.nn.Module)]
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e6, counter.get_total_flops() / 1e9


ROWS: dict[str, Callable[[], tuple[float, float]]] = {
    "shapes_alignment (the embedded classifier, 64 px)": shapes_alignment,
    "hpsv2 (ViT-H/14 image + text)": hpsv2,
    "pickscore (ViT-H/14 image + text)": hpsv2,
    "imagereward (BLIP ViT-L/16 + BERT-base with cross-attention)": imagereward,
    "ocr (TrOCR-base, 16 tokens decoded)": ocr,
    "geneval detector (OWLv2 B/16, 960 px, two class names)": owlv2,
    "geneval colour, per coloured object (CLIP ViT-L/14 image)": clip_l14_image_only,
    "aesthetic (CLIP ViT-L/14 image)": clip_l14_image_only,
    "clipscore (CLIP ViT-L/14 image + text)": clip_l14,
}


def main() -> None:
    print("| reward | parameters | GFLOPs per image |")
    print("|---|---|---|")
    for name, row in ROWS.items():
        params, gflops = row()
        shown = f"{gflops:.2f}" if gflops < 10 else f"{gflops:,.0f}"
        print(f"| {name} | {params:,.1f}M | {shown} |", flush=True)


if __name__ == "__main__":
    main()
