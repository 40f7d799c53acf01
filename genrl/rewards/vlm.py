"""Prompt-image alignment as DDPO and RLCM measured it: a vision-language model describes the image, and the
reward is the BERTScore recall of "The image contains {prompt}" against that description.

Heavy (a 7B VLM by default): run it as a server on its own device, as the paper did,

    python -m genrl.rewards.serve --reward "vlm_bertscore(vlm=llava-hf/llava-1.5-7b-hf)" --port 8000

BERTScore recall (Zhang et al., 2020), without idf weighting or baseline rescaling: embed both texts with one
hidden layer of a BERT-family model, drop the special tokens, and average over the reference's tokens the best
cosine similarity with any token of the description.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genrl.images import pil_images
from genrl.rewards.clip import load_pretrained

NAME = "vlm_bertscore"


class VLMBertScore:
    differentiable = False

    def __init__(
        self,
        vlm: str = "llava-hf/llava-1.5-7b-hf",
        bert: str = "roberta-large",
        bert_layer: str = "17",
        question: str = "what is going on in this image?",
        template: str = "The image contains {prompt}",
        max_new_tokens: str = "64",
    ):
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        self.processor = load_pretrained(AutoProcessor, vlm, NAME, "vlm")
        self.processor.tokenizer.padding_side = "left"  # generation continues every row from its end
        self.vlm = load_pretrained(AutoModelForImageTextToText, vlm, NAME, "vlm").eval()
        self.bert_tokenizer = load_pretrained(AutoTokenizer, bert, NAME, "bert")
        self.bert = load_pretrained(AutoModel, bert, NAME, "bert").eval()
        self.bert_layer = int(bert_layer)
        self.question, self.template, self.max_new_tokens = question, template, int(max_new_tokens)

    @torch.no_grad()
    def describe(self, images: torch.Tensor) -> list[str]:
        pils = pil_images(images)
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.question}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = self.processor(images=pils, text=[text] * len(pils), return_tensors="pt", padding=True)
        inputs = inputs.to(self.vlm.device)
        out = self.vlm.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    @torch.no_grad()
    def token_embeddings(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised hidden states of ``bert_layer`` (B, T, D), and the mask of real, non-special tokens."""
        tokens = self.bert_tokenizer(
            texts, padding=True, truncation=True, return_tensors="pt", return_special_tokens_mask=True
        )
        keep = tokens.pop("special_tokens_mask").eq(0) & tokens["attention_mask"].bool()
        hidden = self.bert(**tokens.to(self.bert.device), output_hidden_states=True).hidden_states[self.bert_layer]
        return F.normalize(hidden.float(), dim=-1), keep.to(hidden.device)

    def recall(self, candidates: list[str], references: list[str]) -> torch.Tensor:
        cand, cand_keep = self.token_embeddings(candidates)
        ref, ref_keep = self.token_embeddings(references)
        similarity = ref @ cand.transpose(1, 2)  # (B, reference tokens, candidate tokens)
        similarity = similarity.masked_fill(~cand_keep[:, None, :], -2.0)
        best = similarity.max(dim=2).values.clamp(min=-1.0)  # a candidate with no tokens matches nothing
        return (best * ref_keep).sum(1) / ref_keep.sum(1).clamp(min=1)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        answers = self.describe(images)
        for entry, answer in zip(metadata, answers):
            entry["vlm_answer"] = answer  # kept with the sample, for inspection
        return self.recall(answers, [self.template.format(prompt=p) for p in prompts]).cpu()
