"""The torch SDPA baselines: the flash, memory-efficient and cuDNN backends, each forced on its own."""

from __future__ import annotations

import torch.nn.functional as F


def sdpa_backends():
    """(name, backend) of the SDPA backends the benchmark compares with."""
    from torch.nn.attention import SDPBackend

    return [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
    ]


def run_sdpa(backend, q, k, v, mask=None, is_causal=False, gqa=False):
    """``scaled_dot_product_attention`` on one backend only."""
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([backend]):
        kw = {"enable_gqa": True} if gqa else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **kw)
