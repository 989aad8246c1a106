"""A transformer with a model preset's real shapes and random weights, for timing (its outputs mean nothing).

Per layer (Llama-style; OPT presets get OPT's two-matrix ReLU MLP instead of the gated one):

    h = rms_norm(x); qkv = h @ W_qkv; [attention through the KV pool]; x = x + attn @ W_o
    h = rms_norm(x); x = x + silu(h @ W_gate) * (h @ W_up) @ W_down

plus the token embedding before the layers, and a final norm and the LM head for one row per sequence (the token it
samples: greedy argmax). Rotary embeddings are left out (a few elementwise kernels; outputs are meaningless anyway).
Weights are bf16 (or the given dtype), drawn N(0, 1 / fan_in) so activations stay O(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sim.hardware.models import ModelSpec


@dataclass(frozen=True)
class Shapes:
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_size: int
    intermediate: int
    vocab: int
    gated_mlp: bool = True

    @classmethod
    def of(cls, spec: ModelSpec, layers: int | None = None) -> Shapes:
        return cls(
            layers or spec.num_layers,
            spec.hidden_size,
            spec.num_q_heads,
            spec.num_kv_heads,
            spec.head_size,
            spec.intermediate_size,
            spec.vocab_size,
            gated_mlp=not spec.name.lower().startswith("opt"),
        )

    @property
    def q_size(self) -> int:
        return self.q_heads * self.head_size

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_size

    def num_params(self) -> int:
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        attn = self.hidden * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden
        return self.layers * (attn + mlp + 2 * self.hidden) + 2 * self.vocab * self.hidden + self.hidden


class RandomTransformer:
    def __init__(self, shapes: Shapes, dtype: torch.dtype = torch.bfloat16, device="cuda", seed: int = 0):
        self.shapes, self.dtype, self.device = shapes, dtype, torch.device(device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        s = shapes

        def w(rows: int, cols: int) -> torch.Tensor:  # F.linear weight [out, in]
            t = torch.empty((rows, cols), dtype=dtype, device=self.device)
            return t.normal_(0.0, cols**-0.5, generator=gen)

        self.embed = torch.empty((s.vocab, s.hidden), dtype=dtype, device=self.device).normal_(0.0, 1.0, generator=gen)
        self.layers = []
        for _ in range(s.layers):
            mlp_in = 2 * s.intermediate if s.gated_mlp else s.intermediate
            self.layers.append(
                {
                    "norm1": torch.ones(s.hidden, dtype=dtype, device=self.device),
                    "qkv": w(s.q_size + 2 * s.kv_size, s.hidden),
                    "o": w(s.hidden, s.q_size),
                    "norm2": torch.ones(s.hidden, dtype=dtype, device=self.device),
                    "up": w(mlp_in, s.hidden),
                    "down": w(s.hidden, s.intermediate),
                }
            )
        self.final_norm = torch.ones(s.hidden, dtype=dtype, device=self.device)
        self.lm_head = w(s.vocab, s.hidden)
        self.scale = s.head_size**-0.5

    def weight_bytes(self) -> int:
        tensors = [self.embed, self.final_norm, self.lm_head] + [t for layer in self.layers for t in layer.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    # --- pieces the executor calls ------------------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed)

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, 1e-6)

    def qkv(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h for the residual, q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D]) of the new tokens."""
        s, p = self.shapes, self.layers[layer]
        qkv = F.linear(self.norm(x, p["norm1"]), p["qkv"])
        t = qkv.shape[0]
        q = qkv[:, : s.q_size].view(t, s.q_heads, s.head_size)
        k = qkv[:, s.q_size : s.q_size + s.kv_size].view(t, s.kv_heads, s.head_size)
        v = qkv[:, s.q_size + s.kv_size :].view(t, s.kv_heads, s.head_size)
        return q, k, v

    def attn_out_and_mlp(self, layer: int, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        s, p = self.shapes, self.layers[layer]
        x = x + F.linear(attn.view(attn.shape[0], s.q_size), p["o"])
        h = F.linear(self.norm(x, p["norm2"]), p["up"])
        if s.gated_mlp:
            h = F.silu(h[:, : s.intermediate]) * h[:, s.intermediate :]
        else:
            h = F.relu(h)
        return x + F.linear(h, p["down"])

    def sample(self, x_last: torch.Tensor) -> torch.Tensor:
        """Greedy next token of each row (the LM head over the vocabulary, then argmax)."""
        return torch.argmax(F.linear(self.norm(x_last, self.final_norm), self.lm_head), dim=-1)
