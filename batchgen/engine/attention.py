"""An exact, compile-friendly attention processor for Mochi's joint video-text attention.

diffusers' `MochiAttnProcessor2_0` attends over [video tokens; valid text tokens] one sample at a time,
finding the valid text tokens with `torch.nonzero(mask)`: a host sync and a data-dependent shape per block
and sample, which also breaks torch.compile graphs. `BatchgenMochiAttnProcessor` computes the same thing
(same projections, norms and rotary embedding, same softmax over the same keys) with fixed shapes: the
joint sequence keeps all 256 text slots and the padded ones are excluded by the kernel, either through a
key mask or through per-sample key counts (`seqused_k`). Rows of padded text queries come out as zeros,
as in diffusers, so even the (unused) text stream of every block matches.

The attention core is one opaque custom op (`batchgen::mochi_joint_attention`), so torch.compile traces a
whole block without a break whatever kernel runs inside, and kernels that dynamo cannot trace (FA3 from an
extension, a per-sample loop) still compile around.

Backends (`install(..., backend=...)`), all exact up to floating-point reassociation:

| backend      | kernel                                                   | where            |
|--------------|----------------------------------------------------------|------------------|
| sdpa         | SDPA with a boolean key mask; torch picks the kernel     | anywhere         |
| cudnn        | SDPA with the key mask, forced onto cuDNN attention       | CUDA, cuDNN >= 9 |
| flash-varlen | FlashAttention-2 (torch's) varlen with per-sample seqused_k | CUDA sm80+     |
| fa3          | FlashAttention-3 varlen with seqused_k (flash_attn_interface) | Hopper, if installed |
| prefix       | per sample, unmasked SDPA over the valid prefix (diffusers' own math, one host sync per call) | anywhere |

`auto` takes the first of `AUTO_ORDER` that runs here and agrees with `sdpa` on a small probe; the order
comes from benchmarks/bench_speed.py on an H100 (see benchmarks/results/). On the CPU it is `sdpa`.

Why `prefix` wins on the GPU: the kernels torch has for a masked (or varlen) problem are 30-40% slower than
its unmasked cuDNN kernel on Hopper, and the mask only removes a few hundred of ~8k-45k keys. `prefix`
pays one host sync per block for the per-sample lengths (it runs inside the custom op, so compiled graphs
stay whole) and computes exactly what diffusers computes, on the same kernel: bit-identical in eager.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from batchgen.engine.module_state import state

BACKENDS = ("sdpa", "cudnn", "flash-varlen", "fa3", "prefix")
# Fastest first. H100, torch 2.11, cuDNN 9.19, 163 frames (benchmarks/results/speed_h100.json): prefix 572
# TFLOP/s (torch's unmasked kernel there is cuDNN), masked sdpa/cudnn ~404 (a mask takes cuDNN and the
# efficient kernel off their fast path), flash-varlen 358 (FlashAttention-2). fa3 was not installed there:
# it leads on trust of its published Hopper speed, and the probe drops it if it fails or disagrees.
AUTO_ORDER = ("fa3", "prefix", "sdpa", "cudnn", "flash-varlen")


def _key_valid(text_mask: torch.Tensor, num_video: int) -> torch.Tensor:
    """(B, N + T) bool: every video token, then the text tokens the prompt's attention mask keeps."""
    video = torch.ones(text_mask.shape[0], num_video, dtype=torch.bool, device=text_mask.device)
    return torch.cat([video, text_mask.to(torch.bool)], dim=1)


def _sdpa_masked(q, k, v, key_valid):
    # (B, S, H, D) -> (B, H, S, D) views: the fused kernels read this layout natively.
    mask = key_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _cudnn_masked(q, k, v, key_valid):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return _sdpa_masked(q, k, v, key_valid)


def _varlen_packed(q, k, v, key_valid):
    """q, k, v flattened to (batch*seq, heads, dim) with the cumulative and used key lengths varlen kernels take."""
    b, s, h, d = q.shape
    # Every sample keeps its full slot (fixed shapes); the kernel reads only its first seqused_k keys, which
    # are exactly the valid ones because the text mask is a prefix (T5 pads on the right).
    cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
    used = key_valid.sum(dim=1, dtype=torch.int32)
    return q.reshape(b * s, h, d), k.reshape(b * s, h, d), v.reshape(b * s, h, d), cu, used, s


def _flash_varlen(q, k, v, key_valid):
    qp, kp, vp, cu, used, seq = _varlen_packed(q, k, v, key_valid)
    out = torch.ops.aten._flash_attention_forward(qp, kp, vp, cu, cu, seq, seq, 0.0, False, False, seqused_k=used)[0]
    return out.view(q.shape)


@functools.lru_cache(maxsize=1)
def _fa3_module():
    try:
        import flash_attn_interface  # FlashAttention-3 (Hopper), built from the flash-attention repo
    except Exception:
        return None
    return flash_attn_interface


def _fa3(q, k, v, key_valid):
    qp, kp, vp, cu, used, seq = _varlen_packed(q, k, v, key_valid)
    out = _fa3_module().flash_attn_varlen_func(qp, kp, vp, cu, cu, seq, seq, seqused_k=used)
    if isinstance(out, tuple):  # some FA3 releases also return the log-sum-exp
        out = out[0]
    return out.view(q.shape)


def _prefix(q, k, v, key_valid):
    # What diffusers does, minus nonzero(): the valid tokens are a prefix, so a slice is enough.
    lengths = key_valid.sum(dim=1).tolist()
    out = torch.zeros_like(q)
    for i, n in enumerate(lengths):
        qi, ki, vi = (t[i : i + 1, :n].transpose(1, 2) for t in (q, k, v))
        out[i : i + 1, :n] = F.scaled_dot_product_attention(qi, ki, vi).transpose(1, 2)
    return out


_KERNELS = {
    "sdpa": _sdpa_masked,
    "cudnn": _cudnn_masked,
    "flash-varlen": _flash_varlen,
    "fa3": _fa3,
    "prefix": _prefix,
}


@torch.library.custom_op("batchgen::mochi_joint_attention", mutates_args=())
def joint_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor, backend: str
) -> torch.Tensor:
    """Softmax attention of (B, S, H, D) q over k/v restricted to `key_valid` keys; rows of invalid
    queries are zero. Returns (B, S, H, D), contiguous."""
    out = _KERNELS[backend](q, k, v, key_valid)
    # Padded text queries: diffusers never computes them and pads its output with zeros.
    return (out * key_valid[:, :, None, None].to(out.dtype)).contiguous()


@joint_attention.register_fake
def _(q, k, v, key_valid, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Mochi's interleaved rotary embedding, computed in fp32 exactly as diffusers does.
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    rc = (x_even * cos - x_odd * sin).to(x.dtype)
    rs = (x_even * sin + x_odd * cos).to(x.dtype)
    return torch.stack([rc, rs], dim=-1).flatten(-2)


class BatchgenMochiAttnProcessor:
    """Drop-in replacement for diffusers' MochiAttnProcessor2_0 (same call signature)."""

    # The rotary embedding for the channel order of the model's queries and keys (qk_halves.py has another).
    rotate = staticmethod(_rotary)

    def __init__(self, backend: str = "sdpa"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend = backend

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_video = hidden_states.shape[1]
        num_text = encoder_hidden_states.shape[1]

        def heads(t):
            return t.unflatten(2, (attn.heads, -1))

        query = attn.norm_q(heads(attn.to_q(hidden_states)))
        key = attn.norm_k(heads(attn.to_k(hidden_states)))
        value = heads(attn.to_v(hidden_states))
        enc_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
        enc_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        enc_value = heads(attn.add_v_proj(encoder_hidden_states))
        if image_rotary_emb is not None:
            query = self.rotate(query, *image_rotary_emb)
            key = self.rotate(key, *image_rotary_emb)

        # (B, N + T, H, D): video first, then text, as diffusers concatenates them.
        query = torch.cat([query, enc_query], dim=1)
        key = torch.cat([key, enc_key], dim=1)
        value = torch.cat([value, enc_value], dim=1)
        key_valid = _key_valid(attention_mask, num_video)

        out = self._attend(query, key, value, key_valid, hidden_states.dtype, attn).flatten(2, 3)
        hidden_states, encoder_hidden_states = out.split_with_sizes((num_video, num_text), dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states

    def _attend(self, query, key, value, key_valid, dtype: torch.dtype, attn=None) -> torch.Tensor:
        # The attention core alone: other kernels (fp8_attention.py) replace it and keep the projections,
        # norms, rotary embedding and output around it, which must stay diffusers' exactly.
        return joint_attention(query, key, value, key_valid, self.backend)


def _probe(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Does `backend` run here and agree with masked SDPA on a small padded problem?"""
    if backend == "fa3" and _fa3_module() is None:
        return False
    if backend in ("cudnn", "flash-varlen", "fa3") and device.type != "cuda":
        return False
    gen = torch.Generator(device="cpu").manual_seed(0)
    b, n, t, h, d = 2, 96, 32, 2, 128
    q, k, v = (torch.randn(b, n + t, h, d, generator=gen).to(device, dtype) for _ in range(3))
    text = torch.zeros(b, t, dtype=torch.bool)
    text[0, :5] = True
    text[1, :t] = True
    key_valid = _key_valid(text, n).to(device)
    try:
        got = joint_attention(q, k, v, key_valid, backend)
        want = joint_attention(q.float(), k.float(), v.float(), key_valid, "sdpa")
    except Exception:
        return False
    return bool(torch.allclose(got.float(), want, atol=2e-2 if dtype != torch.float32 else 1e-4, rtol=0))


def choose_backend(device, dtype=torch.bfloat16, order: tuple[str, ...] = AUTO_ORDER) -> str:
    device = torch.device(device)
    if device.type != "cuda":
        return "sdpa"  # one fused CPU kernel; the other backends are GPU kernels or a per-sample loop
    for name in order:
        if _probe(name, device, dtype):
            return name
    return "sdpa"


def _attention_modules(transformer):
    return [block.attn1 for block in transformer.transformer_blocks]


def install(transformer, backend: str = "auto") -> str:
    """Put BatchgenMochiAttnProcessor on every block of a MochiTransformer3DModel; returns the backend used
    (record it: it names the kernel the video was computed with)."""
    if backend == "auto":
        param = next(transformer.parameters())
        backend = choose_backend(param.device, param.dtype if param.is_floating_point() else torch.bfloat16)
    elif backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
    processor = BatchgenMochiAttnProcessor(backend)
    refuse_on_halved_channels(transformer, processor)
    for attn in _attention_modules(transformer):
        attn.processor = processor
    state(transformer).attention = backend
    return backend


def refuse_on_halved_channels(transformer, processor) -> None:
    """Half-split query/key channels (qk_halves.py) give wrong attention, silently, under a processor that
    rotates interleaved pairs: refuse rather than render it."""
    if state(transformer).qk_halved and not getattr(processor, "halves", False):
        raise ValueError("the query/key channels are in half-split order: call qk_halves.to_interleaved "
                         "before putting another attention processor on this transformer")


def uninstall(transformer) -> None:
    """Back to diffusers' own processor."""
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    refuse_on_halved_channels(transformer, None)
    for attn in _attention_modules(transformer):
        attn.processor = MochiAttnProcessor2_0()
    state(transformer).attention = None
