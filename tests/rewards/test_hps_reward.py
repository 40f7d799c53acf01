"""HPS v2.1 through its real loading path, on a tiny random open_clip checkpoint written here (no download): the
score equals open_clip's forward, written out below from open_clip's module structure, on hpsv2's preprocessing."""

import json

import pytest
import torch
import torch.nn.functional as F

from genrl.rewards import load_reward
from genrl.shapes.tiny import _tokenizer
from tests.helpers import expect_error, fast_args

# An open_clip model config, ViT-H-14's format (two heads of 16 in the vision tower, set by head_width).
CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 514, "width": 24, "heads": 2, "layers": 2},
}
HEADS = {"visual.": 2, "": 2}


def _open_clip_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under open_clip's CLIP names (layer norms and biases random too, so that a swap shows)."""
    rand = lambda *shape, scale=0.2: scale * torch.randn(*shape, generator=generator)
    state: dict[str, torch.Tensor] = {}

    def blocks(prefix: str, width: int, layers: int) -> None:
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            state.update({p + "attn.in_proj_weight": rand(3 * width, width), p + "attn.in_proj_bias": rand(3 * width)})
            state.update({p + "attn.out_proj.weight": rand(width, width), p + "attn.out_proj.bias": rand(width)})
            state.update({p + "mlp.c_fc.weight": rand(4 * width, width), p + "mlp.c_fc.bias": rand(4 * width)})
            state.update({p + "mlp.c_proj.weight": rand(width, 4 * width), p + "mlp.c_proj.bias": rand(width)})
            for norm in ("ln_1", "ln_2"):
                state.update({f"{p}{norm}.weight": 1 + rand(width), f"{p}{norm}.bias": rand(width)})

    v, t, e = CONFIG["vision_cfg"], CONFIG["text_cfg"], CONFIG["embed_dim"]
    grid = v["image_size"] // v["patch_size"]
    state["visual.conv1.weight"] = rand(v["width"], 3, v["patch_size"], v["patch_size"])
    state["visual.class_embedding"] = rand(v["width"])
    state["visual.positional_embedding"] = rand(grid * grid + 1, v["width"])
    for norm in ("ln_pre", "ln_post"):
        state |= {f"visual.{norm}.weight": 1 + rand(v["width"]), f"visual.{norm}.bias": rand(v["width"])}
    blocks("visual.", v["width"], v["layers"])
    state["visual.proj"] = rand(v["width"], e)
    state["token_embedding.weight"] = rand(t["vocab_size"], t["width"])
    state["positional_embedding"] = rand(t["context_length"], t["width"])
    blocks("", t["width"], t["layers"])
    state |= {"ln_final.weight": 1 + rand(t["width"]), "ln_final.bias": rand(t["width"])}
    state["text_projection"] = rand(t["width"], e)
    state["logit_scale"] = torch.tensor(4.6052)
    return state


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hps")
    state = _open_clip_state(torch.Generator().manual_seed(0))
    torch.save({"epoch": 1, "state_dict": state}, folder / "HPS_tiny.pt")  # the published file's layout
    (folder / "ViT-tiny.json").write_text(json.dumps(CONFIG))
    _tokenizer().save_pretrained(folder / "tokenizer")
    spec = f"hpsv2(checkpoint={folder / 'HPS_tiny.pt'}, config={folder / 'ViT-tiny.json'}, "
    spec += f"tokenizer={folder / 'tokenizer'})"
    return spec, state


def _transformer(x, state, prefix, heads, mask=None):
    """open_clip's Transformer: pre-norm residual blocks of nn.MultiheadAttention and a GELU MLP."""
    width = x.shape[-1]
    i = 0
    while f"{prefix}transformer.resblocks.{i}.ln_1.weight" in state:
        p = f"{prefix}transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({k[len(p + "attn.") :]: v for k, v in state.items() if k.startswith(p + "attn.")})
        h = F.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        i += 1
    return x


@torch.no_grad()
def _reference_hps(state, images, prompts):
    """hpsv2's score: ResizeMaxSize(224-equivalent) + black padding + OpenAI normalisation, then open_clip's
    encode_image / encode_text, L2-normalised, and their dot product (no logit scale)."""
    size = CONFIG["vision_cfg"]["image_size"]
    h, w = images.shape[-2:]  # 64 x 48: the long side to 32 -> 32 x 24, padded by 4 on the left and right
    resized = F.interpolate(images, size=(size, round(w * size / h)), mode="bicubic", antialias=True)
    canvas = torch.zeros(len(images), 3, size, size)
    left = (size - resized.shape[-1]) // 2
    canvas[..., left : left + resized.shape[-1]] = resized
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = F.conv2d((canvas - mean) / std, state["visual.conv1.weight"], stride=CONFIG["vision_cfg"]["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    cls = state["visual.class_embedding"].expand(len(x), 1, -1)
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = _transformer(x, state, "visual.", HEADS["visual."])
    pooled = F.layer_norm(x[:, 0], x.shape[-1:], state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    image = pooled @ state["visual.proj"]
    # open_clip's tokenizer: start, tokens, end, zero padding to the context length; features at the end token
    # (the highest id), under a causal mask.
    context = CONFIG["text_cfg"]["context_length"]
    ids = torch.zeros(len(prompts), context, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens = _tokenizer()(prompt)["input_ids"]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    x = state["token_embedding.weight"][ids] + state["positional_embedding"]
    causal = torch.full((context, context), float("-inf")).triu(1)
    x = _transformer(x, state, "", HEADS[""], causal)
    x = F.layer_norm(x, x.shape[-1:], state["ln_final.weight"], state["ln_final.bias"])
    text = x[torch.arange(len(ids)), ids.argmax(-1)] @ state["text_projection"]
    return (F.normalize(image, dim=-1) * F.normalize(text, dim=-1)).sum(-1)


IMAGES = F.interpolate(torch.rand(3, 3, 8, 6, generator=torch.Generator().manual_seed(1)), size=(64, 48))
PROMPTS = ["a red circle", "two blue squares on a long wide table", ""]


def test_hps_is_the_cosine_of_open_clips_features(tiny_hps):
    spec, state = tiny_hps
    reward = load_reward(spec)
    assert reward.differentiable
    images = IMAGES.clone().requires_grad_(True)
    value = reward(images, PROMPTS, [{}] * 3)
    torch.testing.assert_close(value.detach(), _reference_hps(state, IMAGES, PROMPTS), rtol=1e-4, atol=1e-5)
    value.sum().backward()
    assert images.grad.abs().sum() > 0


def test_hpsv2_trains_two_epochs_on_the_tiny_checkpoint(tiny_hps, tmp_path):
    from genrl.train import main

    main(fast_args(tmp_path, "hps", "--reward", tiny_hps[0]))
    assert (tmp_path / "hps" / "checkpoints" / "latest").exists()


def test_hpsv2_offline_without_its_checkpoint_is_one_line(capsys, tmp_path):
    expect_error(
        capsys,
        fast_args(tmp_path, "r", "--reward", "hpsv2"),
        "needs HPS_v2.1_compressed.pt of the hub repo xswu/HPSv2, which is not in the hub cache; download it "
        "(huggingface-cli download xswu/HPSv2 HPS_v2.1_compressed.pt) or pass the file: "
        "--reward 'hpsv2(checkpoint=PATH)'",
    )
    expect_error(capsys, fast_args(tmp_path, "r", "--reward", "hpsv2(checkpoint=/no/such.pt)"), "no checkpoint file")
