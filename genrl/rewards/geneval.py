"""A GenEval-style compositional judge: which objects, how many, of which colour and where, from an open-vocabulary
detector and CLIP, scored by GenEval's rules (Ghosh et al., 2023; ``evaluation/evaluate_images.py``).

Each prompt carries GenEval's metadata, ``{"tag": ..., "include": [{"class", "count", "color"?, "position"?}],
"exclude": [{"class", "count"}]}``: from the prompt's own metadata where it has ``include``, else looked up by the
prompt's text in ``metadata=`` (a GenEval-format jsonl; default ``geneval``, GenEval's 553 evaluation prompts, which
``--prompts geneval`` trains on).

The rules (``select_objects``, ``judge``; pure functions of the metadata and the detections, tested on their own):

- detections of a class are kept above the confidence ``threshold`` (0.3; ``counting_threshold`` 0.9 for the
  counting task), the ``max_objects`` (16) most confident, then greedy NMS at IoU ``max_overlap`` (GenEval: 1.0,
  none; an open-vocabulary detector answers several overlapping boxes for one object, hence 0.5 here by default);
- GenEval's 0/1 (``score=strict``): every ``include`` has at least ``count`` objects; their ``count`` most confident
  have the colour asked (CLIP ViT-L/14 zero-shot over GenEval's ten colours and three templates, on the box's
  crop); each of them lies at ``position`` relative to every object of the target include (box centres, offsets
  less ``position_threshold`` (0.1) x the boxes' summed sizes, a direction holding over half the offset's norm);
  and no ``exclude`` has ``count`` objects or more (counting: exactly N);
- flow_grpo's reward (``score=fraction``, the default, as flow_grpo trains on GenEval): the mean over the
  requirements of 1 - |count - found| / count for each class's count (all its kept objects; below 0 where over
  twice as many are found), the same for the objects of the colour asked, and 1 or 0 for a position (flow_grpo's
  code also appends a 1 after a failed position; here a failed position is 0 only);
- flow_grpo's strict accuracy (``score=exact``): every count exact, every colour and position right.

GenEval detects with Mask2Former (mmdetection) and classifies a colour on the object's mask over grey; this judge
detects with OWLv2 / OWL-ViT through transformers (``detector=``, a hub id or local folder) and crops the box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genrl.errors import GenrlError
from genrl.images import pil_images

NAME = "geneval"
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLOR_TEMPLATES = ("a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object")
SCORES = ("fraction", "strict", "exact")


# --------------------------------------------------------------------------------------------------
# The rules: pure functions of the metadata and the detections
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenEvalResult:
    correct: bool  # GenEval's own 0/1
    exact: bool  # flow_grpo's strict accuracy: exact counts, colours and positions
    fraction: float  # flow_grpo's reward: the mean of the requirements' partial scores
    reasons: tuple[str, ...] = ()  # why GenEval's rule fails, as GenEval words it

    def score(self, kind: str) -> float:
        return {"fraction": self.fraction, "strict": float(self.correct), "exact": float(self.exact)}[kind]


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """GenEval's IoU, with its pixel convention (a box x0..x1 is x1 - x0 + 1 wide)."""
    area = lambda box: max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)
    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = 0.1) -> set[str]:
    """Where box A lies relative to box B (x0, y0, x1, y1; y down), factoring in the boxes' sizes: GenEval's rule."""
    boxes = np.array([box_a[:4], box_b[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def select_objects(
    detections: Sequence[dict[str, Any]],
    tag: str,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
    max_overlap: float = 1.0,
) -> dict[str, list[dict[str, Any]]]:
    """The objects GenEval keeps of each class, most confident first: over the task's threshold, the
    ``max_objects`` most confident, then greedy NMS at IoU ``max_overlap`` (1.0: none)."""
    confidence = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[dict[str, Any]]] = {}
    for det in detections:
        by_class.setdefault(det["label"], []).append(det)
    kept: dict[str, list[dict[str, Any]]] = {}
    for label, dets in by_class.items():
        ordering = sorted((d for d in dets if d["score"] > confidence), key=lambda d: -d["score"])[:max_objects]
        objects = []
        while ordering:
            best = ordering.pop(0)
            objects.append(best)
            ordering = [d for d in ordering if max_overlap == 1 or compute_iou(best["box"], d["box"]) < max_overlap]
        if objects:
            kept[label] = objects
    return kept


def _colors(objects: list[dict[str, Any]], classname: str) -> list[str]:
    missing = [o for o in objects if not o.get("color")]
    if missing:
        raise ValueError(f"the colour of a '{classname}' is needed and its detection has no 'color'")
    return [o["color"] for o in objects]


def judge(metadata: dict[str, Any], objects: dict[str, list[dict[str, Any]]], position_threshold: float = 0.1):
    """GenEval's 0/1, flow_grpo's exact 0/1 and its fraction for ``metadata`` given the kept ``objects`` (as
    ``select_objects`` gives them; the most confident ``count`` of a class with a colour requirement carry
    ``color``). Returns a ``GenEvalResult``."""

    def placed(found: list[dict], targets: list[dict], relation: str) -> str | None:
        for obj in found:
            for target in targets:
                relations = relative_position(obj["box"], target["box"], position_threshold)
                if relation not in relations:
                    return " and ".join(sorted(relations))
        return None

    # GenEval's evaluate(): at least ``count``; colour and position on the ``count`` most confident.
    correct, reasons, groups = True, [], []
    for req in metadata.get("include", []):
        classname, count = req["class"], req["count"]
        found = objects.get(classname, [])[:count]
        matched = True
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {classname}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = _colors(found, classname)
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    reasons.append(f"expected {req['color']} {classname}>={count}, found {colors.count(req['color'])}")
            if "position" in req and matched:
                relation, target = req["position"]
                if groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {classname} to be {relation}")
                else:
                    found_relation = placed(found, groups[target], relation)
                    if found_relation is not None:
                        correct = matched = False
                        reasons.append(f"expected {classname} {relation} target, found {found_relation} target")
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(objects.get(classname, [])) >= req["count"]:
            correct = False
            reasons.append(f"expected {classname}<{req['count']}, found {len(objects[classname])}")

    # flow_grpo's evaluate_reward(): exact counts, a partial score per requirement.
    exact, terms, groups = True, [], []
    for req in metadata.get("include", []):
        classname, count = req["class"], req["count"]
        found = objects.get(classname, [])
        matched = True
        terms.append(1 - abs(count - len(found)) / count)
        if len(found) != count:
            exact = matched = False
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                right = _colors(found, classname).count(req["color"])
                terms.append(1 - abs(count - right) / count)
                if right != count:
                    exact = matched = False
            if "position" in req and matched:
                relation, target = req["position"]
                ok = groups[target] is not None and placed(found, groups[target], relation) is None
                terms.append(1.0 if ok else 0.0)
                if not ok:
                    exact = matched = False
        groups.append(found if matched else None)
    fraction = sum(terms) / len(terms) if terms else 0.0
    return GenEvalResult(correct, exact, fraction, tuple(reasons))


def geneval_score(
    metadata: dict[str, Any],
    detections: Sequence[dict[str, Any]],
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
    max_overlap: float = 1.0,
    position_threshold: float = 0.1,
) -> GenEvalResult:
    """``judge`` of the objects ``select_objects`` keeps of ``detections`` ([{label, score, box, color?}])."""
    objects = select_objects(detections, metadata["tag"], threshold, counting_threshold, max_objects, max_overlap)
    return judge(metadata, objects, position_threshold)


def check_record(record: Any, where: str) -> dict[str, Any]:
    """``record`` if it is GenEval metadata that the rules can read, else a one-line ``GenrlError``."""

    def bad(why: str) -> GenrlError:
        return GenrlError(
            f"reward '{NAME}': {where}: {why}; write GenEval's format (prompts/evaluation_metadata.jsonl)"
        )

    if not isinstance(record, dict) or record.get("tag") not in TAGS:
        raise bad(f"'tag' must be one of {', '.join(TAGS)}")
    include = record.get("include")
    if not isinstance(include, list) or not include:
        raise bad("'include' must be a list of {class, count}")
    for key in ("include", "exclude"):
        for i, req in enumerate(record.get(key) or []):
            if not isinstance(req, dict) or not isinstance(req.get("class"), str):
                raise bad(f"{key}[{i}] needs a 'class'")
            count = req.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise bad(f"{key}[{i}]'s 'count' must be a whole number >= 1")
            if key == "include" and "color" in req and req["color"] not in COLORS:
                raise bad(f"include[{i}]'s 'color' must be one of {', '.join(COLORS)}")
            if key == "include" and "position" in req:
                position = req["position"]
                if (
                    not isinstance(position, (list, tuple))
                    or len(position) != 2
                    or position[0] not in POSITIONS
                    or not isinstance(position[1], int)
                    or not 0 <= position[1] < i
                ):
                    raise bad(f"include[{i}]'s 'position' must be [one of {', '.join(POSITIONS)}, an earlier index]")
    return record


# --------------------------------------------------------------------------------------------------
# The models: an open-vocabulary detector and CLIP for colours
# --------------------------------------------------------------------------------------------------
class OwlDetector:
    """OWLv2 / OWL-ViT through transformers: each box is given the image's query it scores highest, with that
    query's sigmoid score (as transformers' post-processing does); boxes in pixels (x0, y0, x1, y1)."""

    query = "a photo of a {}"

    def __init__(self, source: str):
        from transformers import AutoConfig, AutoProcessor, Owlv2ForObjectDetection, OwlViTForObjectDetection

        from genrl.rewards.clip import load_pretrained

        self.processor = load_pretrained(AutoProcessor, source, NAME, "detector")
        kind = load_pretrained(AutoConfig, source, NAME, "detector").model_type
        if kind not in ("owlv2", "owlvit"):
            raise GenrlError(
                f"reward '{NAME}': detector={source} is a '{kind}' model; pass an OWLv2 or OWL-ViT detector "
                "(google/owlv2-base-patch16-ensemble)"
            )
        cls = Owlv2ForObjectDetection if kind == "owlv2" else OwlViTForObjectDetection
        self.model = load_pretrained(cls, source, NAME, "detector").eval().requires_grad_(False)
        self.padded_square = kind == "owlv2"  # OWLv2 pads the image to a square at its bottom right

    @torch.no_grad()
    def __call__(self, pils: list, classes: list[list[str]], floor: float) -> list[list[dict[str, Any]]]:
        """Each image's detections of its ``classes`` scoring over ``floor``, in one batch."""
        union = list(dict.fromkeys(c for names in classes for c in names))
        inputs = self.processor(
            text=[[self.query.format(c) for c in union]] * len(pils), images=pils, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        outputs = self.model(**inputs.to(device))
        logits, boxes = outputs.logits.float().cpu(), outputs.pred_boxes.float().cpu()
        results = []
        for i, (pil, names) in enumerate(zip(pils, classes)):
            own = torch.tensor([c in names for c in union])
            scores, labels = logits[i].masked_fill(~own, -torch.inf).max(-1)
            scores = scores.sigmoid()
            width, height = pil.size
            scale = [max(width, height)] * 4 if self.padded_square else [width, height, width, height]
            cx, cy, w, h = boxes[i].unbind(-1)
            corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor(scale)
            limits = torch.tensor([width, height, width, height], dtype=corners.dtype)
            corners = torch.minimum(corners.clamp(min=0), limits)
            keep = (scores > floor).nonzero().flatten().tolist()
            results.append(
                [{"label": union[labels[k]], "score": scores[k].item(), "box": corners[k].tolist()} for k in keep]
            )
        return results


class ColorClassifier:
    """GenEval's colour classification: CLIP zero-shot over ``COLORS``, each colour's text embedding the normalised
    mean of its three templates' normalised embeddings (clip_benchmark's zero_shot_classifier), on the box's crop."""

    def __init__(self, source: str):
        from transformers import AutoProcessor, CLIPModel

        from genrl.rewards.clip import load_pretrained

        self.model = load_pretrained(CLIPModel, source, NAME, "clip").eval().requires_grad_(False)
        self.processor = load_pretrained(AutoProcessor, source, NAME, "clip")
        self.classifiers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def classifier(self, classname: str) -> torch.Tensor:
        if classname not in self.classifiers:
            texts = [t.format(c=c, classname=classname) for c in COLORS for t in COLOR_TEMPLATES]
            tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            features = self.model.get_text_features(**tokens.to(self.model.device))
            features = getattr(features, "pooler_output", features).float()
            features = torch.nn.functional.normalize(features, dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1)
            self.classifiers[classname] = torch.nn.functional.normalize(features.mean(1), dim=-1)
        return self.classifiers[classname]

    @torch.no_grad()
    def __call__(self, crops: list, classname: str) -> list[str]:
        pixels = self.processor.image_processor(images=crops, return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.model.device, self.model.dtype))
        features = torch.nn.functional.normalize(getattr(features, "pooler_output", features).float(), dim=-1)
        return [COLORS[i] for i in (features @ self.classifier(classname).to(features).T).argmax(-1).tolist()]


def crop(pil: Any, box: Sequence[float]) -> Any:
    """The box's pixels (at least one pixel, inside the image)."""
    width, height = pil.size
    x0, y0 = min(int(box[0]), width - 1), min(int(box[1]), height - 1)
    x1, y1 = max(int(round(box[2])), x0 + 1), max(int(round(box[3])), y0 + 1)
    return pil.crop((x0, y0, x1, y1))


def _float(name: str, value: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise GenrlError(f"reward '{NAME}': {name}={value} must be a number in [{low:g}, {high:g}]")
    return number


class GenEval:
    """``--reward geneval(detector=..., clip=..., score=fraction|strict|exact, metadata=geneval|FILE.jsonl, ...)``"""

    differentiable = False

    def __init__(
        self,
        detector: str = "google/owlv2-base-patch16-ensemble",
        clip: str = "openai/clip-vit-large-patch14",
        score: str = "fraction",
        metadata: str = "geneval",
        threshold: str = "0.3",
        counting_threshold: str = "0.9",
        max_objects: str = "16",
        max_overlap: str = "0.5",
        position_threshold: str = "0.1",
    ):
        from genrl.prompts import load_prompt_records

        if score not in SCORES:
            raise GenrlError(f"reward '{NAME}': score={score} is not one of {', '.join(SCORES)}")
        self.score = score
        try:
            objects = int(max_objects)
        except ValueError:
            objects = 0
        if objects < 1:
            raise GenrlError(f"reward '{NAME}': max_objects={max_objects} must be a whole number >= 1")
        self.rules = {
            "threshold": _float("threshold", threshold, 0, 1),
            "counting_threshold": _float("counting_threshold", counting_threshold, 0, 1),
            "max_objects": objects,
            "max_overlap": _float("max_overlap", max_overlap, 0, 1),
        }
        self.position_threshold = _float("position_threshold", position_threshold, 0, 10)
        records = load_prompt_records(metadata)
        if records is None:
            raise GenrlError(
                f"reward '{NAME}': metadata={metadata} is neither 'geneval' nor a .jsonl file of GenEval records"
            )
        self.lookup = {r["prompt"].strip(): check_record(r, f"{metadata}, prompt {r['prompt']!r}") for r in records}
        self.metadata_source = metadata
        self.detector = OwlDetector(detector)
        self.colors = ColorClassifier(clip)

    def record(self, prompt: str, metadata: dict[str, Any]) -> dict[str, Any]:
        if metadata.get("include") is not None:
            return check_record(metadata, f"the metadata of prompt {prompt!r}")
        prompt = prompt.strip()
        if prompt not in self.lookup:
            raise GenrlError(
                f"reward '{NAME}': prompt {prompt!r} has no GenEval metadata, neither its own nor in "
                f"metadata={self.metadata_source}; train on those prompts (--prompts geneval or --prompts FILE.jsonl "
                "with geneval(metadata=FILE.jsonl))"
            )
        return self.lookup[prompt]

    def results(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> list:
        records = [self.record(p, m) for p, m in zip(prompts, metadata)]
        self.detector.model.to(images.device)
        self.colors.model.to(images.device)
        pils = pil_images(images)
        classes = [[req["class"] for key in ("include", "exclude") for req in r.get(key) or []] for r in records]
        floor = min(self.rules["threshold"], self.rules["counting_threshold"])
        detections = self.detector(pils, [list(dict.fromkeys(c)) for c in classes], floor)
        kept = [select_objects(d, r["tag"], **self.rules) for d, r in zip(detections, records)]
        # The colours GenEval asks about: the ``count`` most confident objects of each class with a colour asked.
        wanted: dict[str, list[tuple[int, dict]]] = {}
        for i, (record, objects) in enumerate(zip(records, kept)):
            for req in record["include"]:
                if "color" in req:
                    for obj in objects.get(req["class"], [])[: req["count"]]:
                        wanted.setdefault(req["class"], []).append((i, obj))
        for classname, items in wanted.items():
            for (_, obj), color in zip(items, self.colors([crop(pils[i], o["box"]) for i, o in items], classname)):
                obj["color"] = color
        return [judge(r, objects, self.position_threshold) for r, objects in zip(records, kept)]

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        return torch.tensor([r.score(self.score) for r in self.results(images, prompts, metadata)])
