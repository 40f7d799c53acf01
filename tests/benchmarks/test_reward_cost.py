"""benchmarks.reward_cost: FLOPs counted on meta tensors, checked against arithmetic done by hand."""

import torch

from benchmarks import reward_cost


def test_the_count_is_the_arithmetic_of_a_linear_layer_on_meta_tensors():
    params, gflops = reward_cost.count(lambda: torch.nn.Linear(1000, 2000), lambda m: m(torch.zeros(3, 1000)))
    assert params == (1000 * 2000 + 2000) / 1e6
    assert gflops == 2 * 3 * 1000 * 2000 / 1e9  # a multiply and an add per weight and row


def test_hps_counts_the_published_architecture():
    params, gflops = reward_cost.hpsv2()
    assert round(params) == 986  # HPS v2's open_clip ViT-H-14: 631M image tower, 355M text tower
    # Its image tower alone: 2 x (the tower's matmul weights) x 257 tokens, give or take attention and the patch
    # embedding: between 300 and 400 GFLOPs.
    assert 300 < gflops < 400
