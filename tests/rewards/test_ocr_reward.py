"""The OCR reward: Flow-GRPO's scoring rule on given strings, and the model path on a tiny random TrOCR-style
VisionEncoderDecoder saved locally (no download)."""

import pytest
import torch
from transformers import (
    TrOCRConfig,
    TrOCRProcessor,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
)

from genrl.errors import GenrlError
from genrl.rewards import load_reward
from genrl.rewards.ocr import levenshtein, ocr_score, quoted_text
from genrl.shapes.tiny import _tokenizer
from tests.helpers import expect_error, fast_args


@pytest.mark.parametrize(
    "recognized,target,expected",
    [
        ("Hello World", "hello world", 1.0),  # spaces and case do not count
        ("xxHELLOWORLDxx", "Hello World", 1.0),  # the target inside the text: 1
        ("hell", "hello", 0.8),  # one insertion away
        ("hallo", "hello", 0.8),  # one substitution
        ("helo world", "hello world", 0.9),  # 10 characters without spaces, one missing
        ("", "open", 0.0),  # nothing read: distance 4 of 4
        ("completely unrelated text", "cat", 0.0),  # the distance is capped at the target's length
        ("ca", "cat", 1 - 1 / 3),
        ("2049 NASA", "NASA 2049", 0.0),  # "2049nasa" vs "nasa2049": 8 edits, capped at 8
    ],
)
def test_flow_grpo_ocr_rule(recognized, target, expected):
    assert ocr_score(recognized, target) == pytest.approx(expected)


def test_levenshtein_and_the_quoted_text():
    assert [levenshtein(a, b) for a, b in [("", "abc"), ("kitten", "sitting"), ("abc", "abc"), ("ab", "ba")]] == [
        3,
        3,
        0,
        2,
    ]
    assert quoted_text('New York Skyline with "Hello World" written with fireworks') == "Hello World"
    assert quoted_text('a "first" and a "second"') == "first"  # Flow-GRPO's split('"')[1]
    for prompt in ("a cat", 'an unclosed "quote', 'empty "  " quotes'):
        with pytest.raises(GenrlError, match="needs the text to render in double quotes"):
            quoted_text(prompt)


@pytest.fixture(scope="module")
def tiny_ocr(tmp_path_factory):
    """A ViT encoder and a TrOCR decoder whose output projection is zero: every logit is 0, so greedy decoding
    reads token 0 at each step, whatever the image, and the reward is known exactly."""
    folder = tmp_path_factory.mktemp("ocr")
    tokenizer = _tokenizer()
    encoder = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2
    )
    decoder = TrOCRConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with torch.no_grad():
        model.decoder.output_projection.weight.zero_()
    model.save_pretrained(folder)
    image_processor = ViTImageProcessor(size={"height": 32, "width": 32})
    TrOCRProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder), tokenizer.decode([0, 0, 0])


def test_the_model_reads_and_the_rule_scores(tiny_ocr):
    folder, read = tiny_ocr
    assert len(read) == 3 and read[0] == read[1] == read[2]
    reward = load_reward(f"ocr(model={folder}, max_new_tokens=3)")
    assert not reward.differentiable
    images = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    prompts = [f'a sign that says "{read}"', f'a board with "x{read[:2]}" on it', 'a "qq" b']
    metadata = [{}, {}, {}]
    value = reward(images, prompts, metadata)
    torch.testing.assert_close(value, torch.tensor([1.0, 1 - 1 / 3, 0.0]))
    assert [m["ocr_text"] for m in metadata] == [read] * 3
    with pytest.raises(GenrlError, match="the prompt 'a cat' has no quoted text"):
        reward(images[:1], ["a cat"], [{}])


def test_ocr_trains_two_epochs_on_the_tiny_model(tiny_ocr, tmp_path):
    from genrl.train import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a sign that says "open"\na cake with "happy birthday" written on it\n')
    main(fast_args(tmp_path, "ocr", "--prompts", str(prompts), "--reward", f"ocr(model={tiny_ocr[0]})"))
    assert (tmp_path / "ocr" / "checkpoints" / "latest").exists()


def test_ocr_offline_without_its_model_is_one_line(capsys, tmp_path):
    expect_error(
        capsys,
        fast_args(tmp_path, "r", "--reward", "ocr"),
        "reward 'ocr' needs the model 'microsoft/trocr-base-printed', which is neither a local folder nor in the hub "
        "cache; download it (huggingface-cli download microsoft/trocr-base-printed) or pass a local folder",
    )
