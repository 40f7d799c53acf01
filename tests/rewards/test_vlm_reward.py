"""The VLM + BERTScore alignment reward through its real code path, on a tiny LLaVA and a tiny BERT."""

import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from genrl.errors import GenrlError
from genrl.rewards import load_reward

WORDS = (
    "the image contains a an cat dog red circle riding bike playing chess what is going on in this ? user assistant :"
).split()
CHAT = (
    "{% for message in messages %}USER : {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT :{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    torch.manual_seed(0)
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_index=vocab["<image>"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(root / "vlm")
    processor.save_pretrained(root / "vlm")

    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    bert_tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    BertModel(
        BertConfig(
            vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
        )
    ).save_pretrained(root / "bert")
    bert_tokenizer.save_pretrained(root / "bert")
    return root


def _reward(root):
    return load_reward(f"vlm_bertscore(vlm={root / 'vlm'}, bert={root / 'bert'}, bert_layer=2, max_new_tokens=5)")


def test_bertscore_recall_matches_a_direct_computation(tiny_models):
    scorer = _reward(tiny_models).fn
    candidates, references = (
        ["a cat riding a bike", "red circle"],
        ["the image contains a cat", "the image contains a dog"],
    )
    got = scorer.recall(candidates, references)
    from transformers import AutoModel, AutoTokenizer

    tok, bert = AutoTokenizer.from_pretrained(tiny_models / "bert"), AutoModel.from_pretrained(tiny_models / "bert")
    for i, (cand, ref) in enumerate(zip(candidates, references)):

        def embed(text):
            ids = tok(text, return_tensors="pt")
            with torch.no_grad():
                hidden = bert(**ids, output_hidden_states=True).hidden_states[2][0, 1:-1]  # drop [CLS], [SEP]
            return torch.nn.functional.normalize(hidden, dim=-1)

        expected = (embed(ref) @ embed(cand).T).max(dim=1).values.mean()
        torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-5)


def test_the_reward_describes_then_scores(tiny_models):
    reward = _reward(tiny_models)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    metadata = [{}, {}]
    value = reward(images, ["a cat", "a red circle"], metadata)
    assert value.shape == (2,) and torch.isfinite(value).all() and not reward.differentiable
    answers = [m["vlm_answer"] for m in metadata]
    assert all(isinstance(a, str) for a in answers)
    scorer = reward.fn
    torch.testing.assert_close(
        value, scorer.recall(answers, ["The image contains a cat", "The image contains a red circle"])
    )
    torch.testing.assert_close(reward(images, ["a cat", "a red circle"], [{}, {}]), value)  # greedy: deterministic


def test_a_missing_vlm_says_how_to_provide_it():
    with pytest.raises(GenrlError, match=r"needs the model 'llava-hf/llava-1.5-7b-hf'.*vlm_bertscore\(vlm=PATH\)"):
        load_reward("vlm_bertscore")
