"""The GenEval-style judge: GenEval's rules on a table of given detections (one row per task type and rule, pass and
fail), then the reward through its real code path on a tiny random OWLv2 and CLIP, checked against a computation by
hand, and trained against for 2 epochs."""

import json

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    PreTrainedTokenizerFast,
)

from genrl.errors import GenrlError
from genrl.prompts import load_prompt_records, load_prompts
from genrl.rewards import load_reward
from genrl.rewards.geneval import (
    COLOR_TEMPLATES,
    COLORS,
    check_record,
    compute_iou,
    geneval_score,
    relative_position,
)
from genrl.train import main
from tests.helpers import fast_args, logged_metrics


def det(label, score, box, color=None):
    return {"label": label, "score": score, "box": box, **({"color": color} if color else {})}


SINGLE = {"tag": "single_object", "include": [{"class": "bench", "count": 1}]}
TWO = {"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}]}
COUNT3 = {"tag": "counting", "include": [{"class": "bus", "count": 3}], "exclude": [{"class": "bus", "count": 4}]}
COLOR = {"tag": "colors", "include": [{"class": "pizza", "count": 1, "color": "purple"}]}
BELOW = {  # "a photo of a bird below a skateboard"
    "tag": "position",
    "include": [{"class": "skateboard", "count": 1}, {"class": "bird", "count": 1, "position": ["below", 0]}],
}
ATTR = {
    "tag": "color_attr",
    "include": [
        {"class": "tennis racket", "count": 1, "color": "purple"},
        {"class": "sink", "count": 1, "color": "black"},
    ],
}
A, B, C, D = [0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]  # apart, side by side
SKATEBOARD = det("skateboard", 0.8, [0, 0, 10, 10])

# (metadata, detections, GenEval's 0/1, flow_grpo's exact 0/1, flow_grpo's fraction), worked out by hand from
# evaluate_images.py's evaluate() and reward-server's evaluate_reward().
RULES = {
    "single: found": (SINGLE, [det("bench", 0.9, A)], True, True, 1.0),
    "single: under the 0.3 threshold": (SINGLE, [det("bench", 0.3, A)], False, False, 0.0),
    "single: another class only": (SINGLE, [det("dog", 0.9, A)], False, False, 0.0),
    # GenEval asks for at least one; flow_grpo for exactly one: 1 - |1 - 2| / 1
    "single: two found": (SINGLE, [det("bench", 0.9, A), det("bench", 0.5, B)], True, False, 0.0),
    "two objects: both": (TWO, [det("bench", 0.9, A), det("sports ball", 0.4, B)], True, True, 1.0),
    "two objects: one missing": (TWO, [det("bench", 0.9, A)], False, False, 0.5),
    "counting: three at 0.9+": (COUNT3, [det("bus", 0.95, box) for box in (A, B, C)], True, True, 1.0),
    # the counting task's threshold is 0.9: a third bus at 0.85 is not counted
    "counting: one under 0.9": (
        COUNT3,
        [det("bus", 0.95, A), det("bus", 0.95, B), det("bus", 0.85, C)],
        False,
        False,
        1 - 1 / 3,
    ),
    "counting: four is the exclude": (COUNT3, [det("bus", 0.95, box) for box in (A, B, C, D)], False, False, 1 - 1 / 3),
    "colors: right": (COLOR, [det("pizza", 0.9, A, "purple")], True, True, 1.0),
    "colors: wrong": (COLOR, [det("pizza", 0.9, A, "red")], False, False, 0.5),
    "colors: no object": (COLOR, [], False, False, 0.0),
    # GenEval judges the colour of the most confident object only
    "colors: the most confident one": (
        COLOR,
        [det("pizza", 0.9, A, "purple"), det("pizza", 0.5, B, "red")],
        True,
        False,
        0.0,  # flow_grpo: two pizzas for one (0), and a count mismatch puts a 0 for the colour
    ),
    "position: below": (BELOW, [SKATEBOARD, det("bird", 0.8, [0, 30, 10, 40])], True, True, 1.0),
    # centres 12 apart, less 0.1 x (10 + 10): 10 of 12 downwards, over half
    "position: just below": (BELOW, [SKATEBOARD, det("bird", 0.8, [0, 12, 10, 22])], True, True, 1.0),
    # centres 1 apart, within 0.1 x the summed heights: no relation
    "position: overlapping": (BELOW, [SKATEBOARD, det("bird", 0.8, [0, 1, 10, 11])], False, False, 2 / 3),
    "position: right of": (BELOW, [SKATEBOARD, det("bird", 0.8, [30, 0, 40, 10])], False, False, 2 / 3),
    "position: no target": (BELOW, [det("bird", 0.8, [0, 30, 10, 40])], False, False, 1 / 3),
    "color attribution: both": (
        ATTR,
        [det("tennis racket", 0.9, A, "purple"), det("sink", 0.9, B, "black")],
        True,
        True,
        1.0,
    ),
    "color attribution: swapped": (
        ATTR,
        [det("tennis racket", 0.9, A, "black"), det("sink", 0.9, B, "purple")],
        False,
        False,
        0.5,
    ),
    "color attribution: one right": (
        ATTR,
        [det("tennis racket", 0.9, A, "purple"), det("sink", 0.9, B, "white")],
        False,
        False,
        0.75,
    ),
}


@pytest.mark.parametrize("row", RULES, ids=list(RULES))
def test_genevals_rules_on_given_detections(row):
    metadata, detections, correct, exact, fraction = RULES[row]
    result = geneval_score(metadata, detections)
    assert (result.correct, result.exact) == (correct, exact), result.reasons
    assert result.fraction == pytest.approx(fraction)
    assert result.score("strict") == float(correct) and result.score("exact") == float(exact)
    assert result.score("fraction") == result.fraction
    assert bool(result.reasons) == (not correct)


def test_every_task_type_has_a_passing_and_a_failing_row():
    for tag in ("single_object", "two_object", "counting", "colors", "position", "color_attr"):
        outcomes = {correct for metadata, _, correct, _, _ in RULES.values() if metadata["tag"] == tag}
        assert outcomes == {True, False}, tag


def test_max_objects_and_nms():
    overlapping = [det("bench", 0.9, [0, 0, 10, 10]), det("bench", 0.8, [1, 0, 11, 10])]  # IoU 10/12
    assert compute_iou(*[d["box"] for d in overlapping]) == pytest.approx(110 / 132)
    assert not geneval_score(SINGLE, overlapping).exact  # GenEval: no NMS (max_overlap 1)
    assert geneval_score(SINGLE, overlapping, max_overlap=0.5).exact
    far_more = [det("bus", 0.95, [10 * i, 0, 10 * i + 5, 5]) for i in range(20)]
    # max_objects keeps the 16 most confident: 1 - |3 - 16| / 3, below zero as flow_grpo's formula goes
    assert geneval_score(COUNT3, far_more).fraction == pytest.approx(1 - 13 / 3)
    assert geneval_score(COUNT3, far_more, max_objects=4).fraction == pytest.approx(1 - 1 / 3)


def test_relative_position_by_hand():
    # B's centre (25, 5) is 20 right of A's (5, 5); less 0.1 x (10 + 10) = 18 of 20: "right of"
    assert relative_position(B, A) == {"right of"}
    assert relative_position(A, B) == {"left of"}
    assert relative_position([0, 0, 10, 10], [20, 20, 30, 30]) == {"left of", "above"}  # diagonal: both
    assert relative_position([0, 0, 10, 10], [0, 1, 10, 11]) == set()
    assert relative_position([0, 0, 10, 10], [0, 1, 10, 11], threshold=0.0) == {"above"}


def test_a_colour_asked_needs_a_colour_and_bad_metadata_is_one_line():
    with pytest.raises(ValueError, match="'color'"):
        geneval_score(COLOR, [det("pizza", 0.9, A)])
    with pytest.raises(GenrlError, match="'position' must be"):
        check_record({**BELOW, "include": [BELOW["include"][1], BELOW["include"][0]]}, "test")
    with pytest.raises(GenrlError, match="'tag' must be one of"):
        check_record({"tag": "size", "include": []}, "test")


def test_the_geneval_prompt_set_carries_its_metadata(tmp_path):
    records = load_prompt_records("geneval")
    assert len(records) == 553 and load_prompts("geneval") == [r["prompt"] for r in records]
    assert {r["tag"] for r in records} == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }
    for record in records:
        check_record(record, record["prompt"])
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**SINGLE, "prompt": "a photo of a bench"}) + "\n")
    assert load_prompts(str(path)) == ["a photo of a bench"]
    path.write_text('{"tag": "single_object"}\n')
    with pytest.raises(GenrlError, match='line 1 has no "prompt"'):
        load_prompts(str(path))


# --------------------------------------------------------------------------------------------------
# The reward on tiny random weights
# --------------------------------------------------------------------------------------------------
WORDS = "a an photo of object bench sports ball bus pizza bird skateboard dog".split() + list(COLORS)
PROMPTS = [
    {**SINGLE, "prompt": "a photo of a bench"},
    {**COUNT3, "prompt": "a photo of three buses"},
    {**COLOR, "prompt": "a photo of a purple pizza"},
    {**BELOW, "prompt": "a photo of a bird below a skateboard"},
]


def _tokenizer():
    vocab = {tok: i for i, tok in enumerate(["!", "<|startoftext|>", "<|endoftext|>", "<unk>", *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="!"
    )
    return tokenizer, len(vocab)


def _towers(vocab_size):
    text = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    vision = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    return {"text_config": text, "vision_config": {**vision, "num_attention_heads": 2}, "projection_dim": 16}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    torch.manual_seed(0)
    tokenizer, vocab_size = _tokenizer()
    Owlv2ForObjectDetection(Owlv2Config(**_towers(vocab_size))).save_pretrained(root / "owlv2")
    Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    ).save_pretrained(root / "owlv2")
    CLIPModel(CLIPConfig(**_towers(vocab_size))).save_pretrained(root / "clip")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return root


def _spec(root, **options):
    options = {"detector": root / "owlv2", "clip": root / "clip", "metadata": root / "prompts.jsonl", **options}
    return "geneval(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"


def _by_hand(root, image, metadata, max_overlap=0.5):
    """Detections and colours computed without the reward's code: transformers' own post-processing, then CLIP's
    zero-shot colours written out."""
    from transformers import AutoProcessor

    processor, model = (
        AutoProcessor.from_pretrained(root / "owlv2"),
        Owlv2ForObjectDetection.from_pretrained(root / "owlv2"),
    )
    classes = list(dict.fromkeys(r["class"] for key in ("include", "exclude") for r in metadata.get(key, [])))
    pil = Image.fromarray((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    inputs = processor(text=[[f"a photo of a {c}" for c in classes]], images=[pil], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    side = max(pil.size)  # OWLv2 pads to a square
    found = processor.post_process_grounded_object_detection(
        outputs, threshold=0.3, target_sizes=[(side, side)], text_labels=[classes]
    )[0]
    limits = torch.tensor([*pil.size, *pil.size]).float()  # inside the image, not its padding
    detections = [
        det(label, score.item(), torch.minimum(box.clamp(min=0), limits).tolist())
        for label, score, box in zip(found["text_labels"], found["scores"], found["boxes"])
    ]
    clip, clip_processor = CLIPModel.from_pretrained(root / "clip"), CLIPProcessor.from_pretrained(root / "clip")
    for req in metadata["include"]:
        if "color" not in req:
            continue
        ranked = sorted(
            (d for d in detections if d["label"] == req["class"] and d["score"] > 0.3), key=lambda d: -d["score"]
        )
        for d in ranked[: req["count"]]:
            x0, y0, x1, y1 = d["box"]
            crop = pil.crop((int(x0), int(y0), max(round(x1), int(x0) + 1), max(round(y1), int(y0) + 1)))
            with torch.no_grad():
                image_features = clip.get_image_features(**clip_processor(images=crop, return_tensors="pt"))
                weights = []
                for color in COLORS:
                    texts = [t.format(c=color, classname=req["class"]) for t in COLOR_TEMPLATES]
                    text_features = clip.get_text_features(
                        **clip_processor(text=texts, return_tensors="pt", padding=True)
                    )
                    text_features = getattr(text_features, "pooler_output", text_features)
                    mean = (text_features / text_features.norm(dim=-1, keepdim=True)).mean(0)
                    weights.append(mean / mean.norm())
            image_features = getattr(image_features, "pooler_output", image_features)
            d["color"] = COLORS[int((image_features @ torch.stack(weights).T).argmax())]
    return geneval_score(metadata, detections, max_overlap=max_overlap)


def test_the_reward_is_genevals_rules_on_the_detectors_output(tiny_models):
    reward = load_reward(_spec(tiny_models))
    images = torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    prompts = [p["prompt"] for p in PROMPTS]
    results = reward.fn.results(images, prompts, [{} for _ in prompts])
    quantised = (images * 255).round() / 255
    for image, record, result in zip(quantised, PROMPTS, results):
        assert result == _by_hand(tiny_models, image, record)
    value = reward(images, prompts, [{} for _ in prompts])
    assert value.tolist() == pytest.approx([r.fraction for r in results]) and not reward.differentiable
    # the prompt's own metadata wins over the lookup; score=strict is GenEval's 0/1
    own = reward(images[:1], ["something else"], [PROMPTS[1]])
    assert own.tolist() == pytest.approx([reward.fn.results(images[:1], [prompts[1]], [{}])[0].fraction])
    strict = load_reward(_spec(tiny_models, score="strict"))(images, prompts, [{} for _ in prompts])
    assert strict.tolist() == [float(r.correct) for r in results]


def test_a_prompt_without_metadata_and_missing_weights_are_one_line(tiny_models):
    reward = load_reward(_spec(tiny_models))
    with pytest.raises(GenrlError, match=r"prompt 'a cat' has no GenEval metadata.*--prompts geneval"):
        reward(torch.rand(1, 3, 32, 32), ["a cat"], [{}])
    with pytest.raises(
        GenrlError, match=r"needs the model 'google/owlv2-base-patch16-ensemble'.*geneval\(detector=PATH\)"
    ):
        load_reward("geneval")
    with pytest.raises(GenrlError, match="score=best is not one of fraction, strict, exact"):
        load_reward(_spec(tiny_models, score="best"))


def test_training_two_epochs_against_geneval(tiny_models, tmp_path):
    prompts = str(tiny_models / "prompts.jsonl")
    main(fast_args(tmp_path, "geneval", "--prompts", prompts, "--reward", _spec(tiny_models)))
    records = logged_metrics(tmp_path / "geneval")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(-5 <= r["reward_mean"] <= 1 for r in records)
