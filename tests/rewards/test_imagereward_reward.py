"""ImageReward through its real loading path, on a tiny random checkpoint under the published file's key names
(written here, no download): the score equals BLIP's forward, written out below from the ImageReward package's
ViT and BERT-with-cross-attention, standardised by the package's mean and std."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer

from genrl.rewards import load_reward
from tests.helpers import expect_error, fast_args

VISION = {"width": 128, "layers": 2, "patch": 8, "image_size": 32}  # two 64-d heads, as BLIP's ViTs have
MED = {  # a med_config.json: BERT's config keys, with BLIP's cross-attention
    "architectures": ["BertModel"],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 40,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "encoder_width": 768,  # the package overwrites it with the ViT's width
    "add_cross_attention": True,
}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "two", "blue", "squares", "on", "table"]
MEAN, STD = 0.16717362830052426, 1.0333394966054072


def _checkpoint(generator: torch.Generator, vocab: int) -> dict[str, torch.Tensor]:
    rand = lambda *shape, scale=0.2: scale * torch.randn(*shape, generator=generator)
    state: dict[str, torch.Tensor] = {}

    def linear(name: str, out: int, inp: int) -> None:
        state.update({f"{name}.weight": rand(out, inp), f"{name}.bias": rand(out)})

    def norm(name: str, width: int) -> None:
        state.update({f"{name}.weight": 1 + rand(width), f"{name}.bias": rand(width)})

    w, p = VISION["width"], VISION["patch"]
    v = "blip.visual_encoder."
    state[v + "cls_token"] = rand(1, 1, w)
    state[v + "pos_embed"] = rand(1, (VISION["image_size"] // p) ** 2 + 1, w)
    state.update({v + "patch_embed.proj.weight": rand(w, 3, p, p), v + "patch_embed.proj.bias": rand(w)})
    for i in range(VISION["layers"]):
        b = f"{v}blocks.{i}."
        norm(b + "norm1", w), linear(b + "attn.qkv", 3 * w, w), linear(b + "attn.proj", w, w)
        norm(b + "norm2", w), linear(b + "mlp.fc1", 4 * w, w), linear(b + "mlp.fc2", w, 4 * w)
    norm(v + "norm", w)
    h, inter, t = MED["hidden_size"], MED["intermediate_size"], "blip.text_encoder."
    state[t + "embeddings.word_embeddings.weight"] = rand(vocab, h)
    state[t + "embeddings.position_embeddings.weight"] = rand(MED["max_position_embeddings"], h)
    state[t + "embeddings.position_ids"] = torch.arange(MED["max_position_embeddings"])[None]  # med.py's buffer
    norm(t + "embeddings.LayerNorm", h)
    for i in range(MED["num_hidden_layers"]):
        layer = f"{t}encoder.layer.{i}."
        for attention, source in (("attention", h), ("crossattention", w)):
            linear(f"{layer}{attention}.self.query", h, h)
            linear(f"{layer}{attention}.self.key", h, source)
            linear(f"{layer}{attention}.self.value", h, source)
            linear(f"{layer}{attention}.output.dense", h, h), norm(f"{layer}{attention}.output.LayerNorm", h)
        linear(layer + "intermediate.dense", inter, h)
        linear(layer + "output.dense", h, inter), norm(layer + "output.LayerNorm", h)
    linear("blip.vision_proj", 256, w), linear("blip.text_proj", 256, h)  # BLIP's contrastive heads: unused
    for i, (out, inp) in zip((0, 2, 4, 6, 7), ((1024, h), (128, 1024), (64, 128), (16, 64), (1, 16))):
        linear(f"mlp.layers.{i}", out, inp)
    return state


@pytest.fixture(scope="module")
def tiny_imagereward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    tokenizer.save_pretrained(folder / "tokenizer")
    state = _checkpoint(torch.Generator().manual_seed(0), len(WORDS))
    torch.save(state, folder / "ImageReward.pt")  # the published file: a bare state dict
    (folder / "med_config.json").write_text(json.dumps({**MED, "vocab_size": len(WORDS)}))
    spec = (
        f"imagereward(checkpoint={folder / 'ImageReward.pt'}, med_config={folder / 'med_config.json'}, "
        f"tokenizer={folder / 'tokenizer'})"
    )
    return spec, state, tokenizer


def _attention(q_in, kv_in, state, prefix, heads, mask=None):
    """BERT's (and BLIP's med.py) attention: separate query/key/value projections, additive -10000 mask."""
    b, n, width = q_in.shape
    split = lambda x: x.view(b, -1, heads, width // heads).transpose(1, 2)
    q = split(F.linear(q_in, state[prefix + "query.weight"], state[prefix + "query.bias"]))
    k = split(F.linear(kv_in, state[prefix + "key.weight"], state[prefix + "key.bias"]))
    v = split(F.linear(kv_in, state[prefix + "value.weight"], state[prefix + "value.bias"]))
    scores = q @ k.transpose(-1, -2) / (width // heads) ** 0.5
    if mask is not None:
        scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, width)


def _ln(x, state, name, eps):
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps)


def _lin(x, state, name):
    return F.linear(x, state[name + ".weight"], state[name + ".bias"])


@torch.no_grad()
def _reference(state, tokenizer, pixels, prompts):
    """ImageReward.score_gard on preprocessed pixels: BLIP's ViT (pre-norm, fused qkv, LayerNorm eps 1e-6), then
    BLIP's BERT over the prompt (35 tokens) with cross-attention to every image token, [CLS] -> MLP, standardised."""
    v, w = "blip.visual_encoder.", VISION["width"]
    x = F.conv2d(pixels, state[v + "patch_embed.proj.weight"], state[v + "patch_embed.proj.bias"], stride=8)
    x = torch.cat([state[v + "cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + state[v + "pos_embed"]
    for i in range(VISION["layers"]):
        b = f"{v}blocks.{i}."
        h = _ln(x, state, b + "norm1", 1e-6)
        qkv = _lin(h, state, b + "attn.qkv").reshape(len(x), -1, 3, w // 64, 64).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-1, -2) * 64**-0.5).softmax(-1)
        x = x + _lin((att @ qkv[2]).transpose(1, 2).reshape(x.shape), state, b + "attn.proj")
        x = x + _lin(F.gelu(_lin(_ln(x, state, b + "norm2", 1e-6), state, b + "mlp.fc1")), state, b + "mlp.fc2")
    image = _ln(x, state, v + "norm", 1e-6)
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"].float()
    t, eps, heads = "blip.text_encoder.", MED["layer_norm_eps"], MED["num_attention_heads"]
    x = state[t + "embeddings.word_embeddings.weight"][ids] + state[t + "embeddings.position_embeddings.weight"][:35]
    x = _ln(x, state, t + "embeddings.LayerNorm", eps)
    for i in range(MED["num_hidden_layers"]):
        layer = f"{t}encoder.layer.{i}."
        a = _attention(x, x, state, layer + "attention.self.", heads, mask)
        x = _ln(_lin(a, state, layer + "attention.output.dense") + x, state, layer + "attention.output.LayerNorm", eps)
        c = _attention(x, image, state, layer + "crossattention.self.", heads)
        x = _ln(
            _lin(c, state, layer + "crossattention.output.dense") + x,
            state,
            layer + "crossattention.output.LayerNorm",
            eps,
        )
        f = _lin(F.gelu(_lin(x, state, layer + "intermediate.dense")), state, layer + "output.dense")
        x = _ln(f + x, state, layer + "output.LayerNorm", eps)
    r = x[:, 0]
    for i in (0, 2, 4, 6, 7):
        r = _lin(r, state, f"mlp.layers.{i}")
    return (r.squeeze(-1) - MEAN) / STD


IMAGES = F.interpolate(torch.rand(3, 3, 8, 6, generator=torch.Generator().manual_seed(1)), size=(64, 48))
PROMPTS = ["a red circle", "two blue squares on a table " * 8, "a zebra"]  # one over 35 tokens, one unknown word


def test_imagereward_is_blips_forward_through_the_head_standardised(tiny_imagereward):
    spec, state, tokenizer = tiny_imagereward
    reward = load_reward(spec)
    assert reward.differentiable
    # The package's transform: the short side to the ViT's size (bicubic), centre crop, OpenAI CLIP's statistics.
    h, w = IMAGES.shape[-2:]
    resized = F.interpolate(IMAGES, size=(int(32 * h / w), 32), mode="bicubic", antialias=True)
    top = (resized.shape[-2] - 32) // 2
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (resized[..., top : top + 32, :] - mean) / std
    images = IMAGES.clone().requires_grad_(True)
    value = reward(images, PROMPTS, [{}] * 3)
    expected = _reference(state, tokenizer, pixels, PROMPTS)
    torch.testing.assert_close(value.detach(), expected, rtol=1e-4, atol=1e-4)
    value.sum().backward()
    assert images.grad.abs().sum() > 0


def test_imagereward_trains_two_epochs_on_the_tiny_checkpoint(tiny_imagereward, tmp_path):
    from genrl.train import main

    main(fast_args(tmp_path, "ir", "--reward", tiny_imagereward[0]))
    assert (tmp_path / "ir" / "checkpoints" / "latest").exists()


def test_imagereward_offline_without_its_checkpoint_is_one_line(capsys, tmp_path):
    expect_error(
        capsys,
        fast_args(tmp_path, "r", "--reward", "imagereward"),
        "needs ImageReward.pt of the hub repo THUDM/ImageReward, which is not in the hub cache; download it "
        "(huggingface-cli download THUDM/ImageReward ImageReward.pt) or pass the file: "
        "--reward 'imagereward(checkpoint=PATH)'",
    )
