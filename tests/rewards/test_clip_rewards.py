"""Aesthetic, CLIPScore and PickScore through their real code path, on tiny random CLIP models saved locally."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from genrl.errors import GenrlError
from genrl.rewards import load_reward
from genrl.rewards.clip import AestheticReward
from genrl.shapes.tiny import _tokenizer


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=224,
            patch_size=32,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=768,  # the aesthetic head reads ViT-L/14's 768-d embeddings
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


# Smooth images, as generated ones are: the resampling kernels of PIL and torch differ most on pixel noise.
IMAGES = torch.nn.functional.interpolate(
    torch.rand(2, 3, 8, 6, generator=torch.Generator().manual_seed(1)), size=(64, 48), mode="bilinear"
)
PROMPTS = ["a red circle", "two blue squares"]


def _processed(processor):
    pils = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in IMAGES]
    return processor(images=pils, return_tensors="pt").pixel_values


def test_preprocessing_matches_the_clip_image_processor(tiny_clip):
    reward = AestheticReward(clip=tiny_clip)
    ours = reward.transform(IMAGES)
    theirs = _processed(reward.processor.image_processor)
    assert ours.shape == theirs.shape == (2, 3, 224, 224)
    # PIL resamples 8-bit images with its own bicubic kernel; torch resamples floats: close, not equal.
    assert (ours - theirs).abs().mean() < 0.01 and (ours - theirs).abs().max() < 0.05


def test_aesthetic_is_the_laion_head_on_normalised_clip_features(tiny_clip):
    reward = load_reward(f"aesthetic(clip={tiny_clip})")
    model = CLIPModel.from_pretrained(tiny_clip)
    pixels = AestheticReward(clip=tiny_clip).transform(IMAGES)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
    x = features / features.norm(dim=-1, keepdim=True)
    head = load_file("genrl/data/aesthetic/laion_aesthetic_head.safetensors")
    for i in (0, 2, 4, 6, 7):  # no activations between the linear layers
        x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    torch.testing.assert_close(reward(IMAGES, PROMPTS, [{}, {}]), x.squeeze(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["clipscore", "pickscore"])
def test_clip_similarity_rewards_and_their_gradient(tiny_clip, name):
    spec = (
        f"clipscore(model={tiny_clip})"
        if name == "clipscore"
        else f"pickscore(model={tiny_clip}, processor={tiny_clip})"
    )
    reward = load_reward(spec)
    assert reward.differentiable
    images = IMAGES.clone().requires_grad_(True)
    value = reward(images, PROMPTS, [{}, {}])
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=reward.fn.transform(IMAGES))
        txt = model.get_text_features(**processor.tokenizer(PROMPTS, padding=True, return_tensors="pt"))
    img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
    cos = torch.nn.functional.cosine_similarity(img, txt)
    expected = 2.5 * cos.clamp(min=0) if name == "clipscore" else model.logit_scale.exp() * cos
    torch.testing.assert_close(value.detach(), expected, rtol=1e-4, atol=1e-5)
    value.sum().backward()
    assert images.grad.abs().sum() > 0


def test_a_missing_model_says_which_and_how_to_get_it():
    with pytest.raises(GenrlError, match="needs the model 'openai/clip-vit-large-patch14'.*huggingface-cli download"):
        load_reward("aesthetic")
    with pytest.raises(GenrlError, match=r"--reward 'clipscore\(model=PATH\)'"):
        load_reward("clipscore(model=/no/such/clip)")
