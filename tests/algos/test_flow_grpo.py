"""Flow-GRPO's parts of the update (issue 42): the KL's precision and its official form, the trained steps
(timestep_fraction), and GRPO-Guard's RatioNorm and step weights; each against an independent computation.

Sources: github.com/yifan123/flow_grpo scripts/train_sd3.py (the KL term, the loop over the first
int(num_steps x timestep_fraction) steps) and flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (std_dev_t);
GRPO-Guard, arXiv 2510.22319 (RatioNorm, the 1/|dt| weights), as verl-omni's documentation writes it and
github.com/X-GenGroup/Flow-Factory trainers/grpo.py GRPOGuardTrainer computes it.
"""

import pytest
import torch

from genrl.steps import gaussian_kl

_DIMS = (1, 2, 3)


def _textbook_kl(mean_p, std_p, mean_q, std_q):
    """The form gaussian_kl had: log(std_q / std_p) + (std_p^2 + dmean^2) / (2 std_q^2) - 1/2, mean over dims."""
    std_p, std_q = std_p.expand_as(mean_p), std_q.expand_as(mean_q)
    return (torch.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5).mean(dim=_DIMS)


# --------------------------------------------------------------------------------------------------
# 1. gaussian_kl keeps fp32's precision
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [1.0, 1 + 1e-4, 1 + 1e-3, 1.03, 1.5, 0.5, 30.0])
def test_gaussian_kl_in_fp32_matches_float64_where_the_textbook_form_loses_digits(ratio):
    """Two policies' steps a little apart, as a KL to the reference is (1e-3 of a std per dim: a KL of about 5e-7
    per dim), with equal, near and unequal stds: the fp32 result is the float64 KL of the same fp32 inputs to a
    few parts in 1e7, where the old form, whose 1/2 and -1/2 cancel, was off by 0.5-4% at equal and near stds."""
    gen = torch.Generator().manual_seed(0)
    mean_q = torch.randn(4, 4, 8, 8, generator=gen)
    std_q = torch.rand(4, 1, 1, 1, generator=gen) * 0.3 + 0.05  # a flow step's std: g sqrt(|dt|)
    std_p = std_q * ratio
    mean_p = mean_q + 1e-3 * std_q * torch.randn(mean_q.shape, generator=gen)
    p64, q64 = [(m.double(), s.double().expand_as(m)) for m, s in ((mean_p, std_p), (mean_q, std_q))]
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(*p64), torch.distributions.Normal(*q64))
    expected = expected.mean(dim=_DIMS)
    (mp, sp), (mq, sq) = p64, q64  # the closed form written out, in float64
    direct = (torch.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5).mean(dim=_DIMS)
    torch.testing.assert_close(direct, expected, rtol=1e-9, atol=0)

    error = lambda kl: ((kl.double() - expected).abs() / expected).max().item()
    new, old = error(gaussian_kl(mean_p, std_p, mean_q, std_q)), error(_textbook_kl(mean_p, std_p, mean_q, std_q))
    assert new < 1e-6, new
    if abs(ratio - 1) < 1e-2:  # where the std term is small against 1/2 the old form loses the mean term's digits
        assert old > 1e-3 and old > 1000 * new, (old, new)
    if ratio == 1.0:  # equal stds: exactly (mean_p - mean_q)^2 / (2 std^2)
        exact = ((mean_p - mean_q) ** 2 / (2 * std_q**2)).mean(dim=_DIMS)
        assert torch.equal(gaussian_kl(mean_p, std_p, mean_q, std_q), exact)
