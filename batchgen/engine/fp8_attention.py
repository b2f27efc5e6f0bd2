"""fp8 attention for Mochi's joint video-text attention (the approximate `fp8-attn` profile).

At 163 frames attention is 71% of a denoising step's FLOP and bf16 attention tops out near 570 TFLOP/s on
Hopper, so a step cannot go below ~4.2 s in bf16 whatever else is done: only lower precision inside
attention gets past that. This module quantizes Q, K and V to float8 e4m3 with proper scales and runs an
fp8 attention kernel; everything around it (projections, norms, rotary, output) is unchanged.

Scaling (SageAttention's recipe, adapted to a floating-point format):
- one scale per (sample, head) for each of Q, K and V, from the amax over that head's valid tokens
  (padded text tokens excluded), mapping it to e4m3's largest value (448); the kernel multiplies the
  scores and outputs back by the inverse (descale) in fp32;
- K is smoothed first: the mean key over the valid tokens is subtracted per head and channel. Exact for
  softmax (every score of a query moves by the same q.mean_k), and it keeps a large common component of
  the keys (real models have such channel offsets) from eating e4m3's three mantissa bits;
- V is smoothed too (mean subtracted, added back to the output: exact because each softmax row sums
  to one); the fp8-attn profile's v1 recipe (fp8_attention_recipes.py): it cut the whole model's per-forward error
  from 0.235 to 0.079 at 163 frames (H200, random weights) at no measurable cost.
- the means and scales are taken over valid tokens through `where`, never a product with the mask:
  padded tokens may hold NaN (torchao's float8 linears turn all-zero rows into NaN).
- P (the softmax probabilities) is quantized by the kernel itself: FA3 shifts the row max so P spans
  [0, 256] before the e4m3 cast, cuDNN scales it by `scale_s`.

Kernels (`KERNELS`), chosen by measurement on an H200 (benchmarks/results/FP8_ATTENTION.md):
- `fa3`: FlashAttention-3's fp8 forward from the `fa3-fwd` wheel (PyPI, 27 MB, Hopper only), varlen
  with per-sample key counts (`seqused_k`), per-(sample, head) descales. The default: the fastest that
  installs from a registry wheel (917 TFLOP/s at 163 frames against 877 for cuDNN's fp8 SDPA and 557 for
  bf16 cuDNN), and it takes per-head descales where cuDNN's Hopper fp8 path takes one per tensor and
  rounds its output to fp8 once more.
- `fa3-prefix`: the same kernel, one dense call per sample over its valid prefix (one host sync).
- `cudnn`: cuDNN's fp8 SDPA through nvidia-cudnn-frontend (PyPI), padding mask; per-tensor scales only
  and, on Hopper, an fp8 output (one more e4m3 rounding).
- `emulated`: dequantize and run SDPA in fp32. Not fast: the reference the tests check the quantization
  against (runs anywhere, the CPU included).

The attention core is one opaque custom op (`batchgen::mochi_joint_attention_fp8_raw`) taking the quantized
tensors, so torch.compile fuses the quantization into the surrounding kernels (rotary, concatenation)
and traces whole blocks without a break, as batchgen.attention does for the exact path.
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F

from batchgen.engine.attention import BatchgenMochiAttnProcessor, refuse_on_halved_channels
from batchgen.engine.module_state import state

E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn
KERNELS = ("fa3", "fa3-batched", "fa3-prefix", "cudnn", "emulated")
DEFAULT_KERNEL = "fa3"
# fp8 tensor cores with these kernels: Hopper (9.0). FA3's fp8 path is sm90-only; cuDNN's fp8 SDPA needs
# 9.0 or newer (Blackwell builds differ and are not measured here).
MIN_CAPABILITY = (9, 0)


# -- kernels ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def fa3_module():
    """FlashAttention-3's Python interface: the `fa3-fwd` wheel's, or a source build's; None if neither."""
    for name in ("fa3_fwd_interface", "flash_attn_interface"):
        try:
            return __import__(name)
        except Exception:  # noqa: BLE001 - a broken build is as good as none
            continue
    return None


def _fa3(q8, k8, v8, qd, kd, vd, key_valid):
    b, s, h, d = q8.shape
    used = key_valid.sum(dim=1, dtype=torch.int32)
    cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q8.device)
    out = fa3_module().flash_attn_varlen_func(
        q8.reshape(b * s, h, d), k8.reshape(b * s, h, d), v8.reshape(b * s, h, d), cu, cu, s, s,
        seqused_q=used, seqused_k=used, q_descale=qd, k_descale=kd, v_descale=vd,
    )
    if isinstance(out, tuple):
        out = out[0]
    return out.view(b, s, h, d)


def _fa3_batched(q8, k8, v8, qd, kd, vd, key_valid):
    # The dense batched call with per-sample key counts: no cu_seqlens, every query row computed (the
    # padded text queries are a few hundred of tens of thousands, and masked after).
    b, s, h, d = q8.shape
    out = fa3_module()._flash_attn_forward(
        q8, k8, v8, seqused_k=key_valid.sum(dim=1, dtype=torch.int32), max_seqlen_q=s, max_seqlen_k=s,
        q_descale=qd, k_descale=kd, v_descale=vd,
    )
    return out[0] if isinstance(out, tuple) else out


def _fa3_prefix(q8, k8, v8, qd, kd, vd, key_valid):
    b, s, h, d = q8.shape
    out = torch.zeros(b, s, h, d, dtype=torch.bfloat16, device=q8.device)
    for i, n in enumerate(key_valid.sum(dim=1).tolist()):
        o = fa3_module().flash_attn_func(
            q8[i : i + 1, :n], k8[i : i + 1, :n], v8[i : i + 1, :n],
            q_descale=qd[i : i + 1], k_descale=kd[i : i + 1], v_descale=vd[i : i + 1],
        )
        out[i : i + 1, :n] = o[0] if isinstance(o, tuple) else o
    return out


class _CudnnFp8:
    """cuDNN fp8 SDPA graphs (nvidia-cudnn-frontend), one per shape; BSHD in, padding mask per sample."""

    def __init__(self):
        import cudnn

        self.cudnn = cudnn
        self.handles: dict = {}
        self.graphs: dict = {}
        self.out_fp8: dict = {}

    def _handle(self, device):
        handle = self.handles.get(device)
        if handle is None:
            handle = self.handles[device] = self.cudnn.create_handle()
        self.cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
        return handle

    def _build(self, b, s, h, d, device, out_bf16: bool):
        cudnn = self.cudnn
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32,
                              handle=self._handle(device))
        dims, strides = (b, h, s, d), (s * h * d, d, h * d, 1)  # BSHD memory seen as (B, H, S, D)
        t = {n: graph.tensor(name=n, dim=dims, stride=strides, data_type=e4m3) for n in ("q", "k", "v")}
        for n in ("dq", "dk", "dv", "ds", "ss", "so"):
            t[n] = graph.tensor(name=n, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
        for n in ("len_q", "len_kv"):
            t[n] = graph.tensor(name=n, dim=(b, 1, 1, 1), stride=(1, 1, 1, 1), data_type=cudnn.data_type.INT32)
        o, _, amax_s, amax_o = graph.sdpa_fp8(
            q=t["q"], k=t["k"], v=t["v"], descale_q=t["dq"], descale_k=t["dk"], descale_v=t["dv"],
            descale_s=t["ds"], scale_s=t["ss"], scale_o=t["so"], generate_stats=False,
            attn_scale=d**-0.5, use_causal_mask=False, use_padding_mask=True,
            seq_len_q=t["len_q"], seq_len_kv=t["len_kv"],
        )
        o.set_output(True).set_dim(dims).set_stride(strides).set_data_type(
            cudnn.data_type.BFLOAT16 if out_bf16 else e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        t["o"], t["amax_s"], t["amax_o"] = o, amax_s, amax_o
        return graph, t

    def __call__(self, q8, k8, v8, qd, kd, vd, key_valid):
        b, s, h, d = q8.shape
        key = (b, s, h, d, q8.device)
        if key not in self.graphs:
            last = None
            for out_bf16 in (True, False):  # bf16 output where cuDNN has it; Hopper may need fp8 O
                try:
                    self.graphs[key] = self._build(b, s, h, d, q8.device, out_bf16)
                    self.out_fp8[key] = not out_bf16
                    break
                except Exception as exc:  # noqa: BLE001
                    last = exc
            else:
                raise RuntimeError(f"cuDNN fp8 SDPA graph not supported here: {last}")
        graph, t = self.graphs[key]
        fp8_out = self.out_fp8[key]
        used = key_valid.sum(dim=1, dtype=torch.int32).view(b, 1, 1, 1)
        one = lambda x: x.reshape(-1)[:1].reshape(1, 1, 1, 1).float().contiguous()  # noqa: E731
        dq, dk, dv = one(qd), one(kd), one(vd)
        scale_s = torch.full((1, 1, 1, 1), E4M3_MAX, device=q8.device)
        # O is a convex combination of V rows: |O| <= amax(V) = dv * 448, so this scale never overflows.
        scale_o = (1.0 / dv) if fp8_out else torch.ones_like(dv)
        out = torch.empty(b, s, h, d, device=q8.device, dtype=FP8 if fp8_out else torch.bfloat16)
        amax = torch.empty(2, device=q8.device)
        pack = {t["q"]: q8, t["k"]: k8, t["v"]: v8, t["dq"]: dq, t["dk"]: dk, t["dv"]: dv,
                t["ds"]: 1.0 / scale_s, t["ss"]: scale_s, t["so"]: scale_o, t["len_q"]: used, t["len_kv"]: used,
                t["o"]: out, t["amax_s"]: amax[0:1].view(1, 1, 1, 1), t["amax_o"]: amax[1:2].view(1, 1, 1, 1)}
        workspace = torch.empty(graph.get_workspace_size(), device=q8.device, dtype=torch.uint8)
        graph.execute(pack, workspace, handle=self._handle(q8.device))
        if fp8_out:
            return (out.float() * dv.view(1, 1, 1, 1)).to(torch.bfloat16)
        return out


@functools.lru_cache(maxsize=1)
def _cudnn_runner():
    return _CudnnFp8()


def _cudnn(q8, k8, v8, qd, kd, vd, key_valid):
    return _cudnn_runner()(q8, k8, v8, qd, kd, vd, key_valid)


def _emulated(q8, k8, v8, qd, kd, vd, key_valid):
    q, k, v = (x.float() * s[:, None, :, None] for x, s in ((q8, qd), (k8, kd), (v8, vd)))
    mask = key_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).to(torch.bfloat16)


_KERNELS = {"fa3": _fa3, "fa3-batched": _fa3_batched, "fa3-prefix": _fa3_prefix, "cudnn": _cudnn, "emulated": _emulated}


@torch.library.custom_op("batchgen::mochi_joint_attention_fp8_raw", mutates_args=())
def joint_attention_fp8_raw(
    q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor,
    q_descale: torch.Tensor, k_descale: torch.Tensor, v_descale: torch.Tensor,
    key_valid: torch.Tensor, kernel: str,
) -> torch.Tensor:
    """The kernel alone: joint_attention_fp8 without the masking of invalid query rows (they hold anything,
    NaN included), which the caller fuses with whatever reads O next (V's mean, the output projection)."""
    return _KERNELS[kernel](q8, k8, v8, q_descale, k_descale, v_descale, key_valid).contiguous()


@joint_attention_fp8_raw.register_fake
def _(q8, k8, v8, q_descale, k_descale, v_descale, key_valid, kernel):
    return torch.empty(q8.shape, dtype=torch.bfloat16, device=q8.device)


def joint_attention_fp8(q8, k8, v8, q_descale, k_descale, v_descale, key_valid, kernel: str) -> torch.Tensor:
    """Softmax attention of e4m3 (B, S, H, D) q over k/v restricted to `key_valid` keys, each tensor
    multiplied back by its (B, H) float32 descale. Returns bf16 (B, S, H, D); rows of invalid queries are 0."""
    out = joint_attention_fp8_raw(q8, k8, v8, q_descale, k_descale, v_descale, key_valid, kernel)
    # where, not a product: a kernel may leave the rows it skipped unwritten (NaN * 0 is NaN). Outside the
    # op, so that the compiler fuses it into what reads O next.
    return torch.where(key_valid[:, :, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


# -- quantization ----------------------------------------------------------------------------------------
def quantize(x: torch.Tensor, valid: torch.Tensor, *, smooth: bool = False, per_tensor: bool = False):
    """(B, S, H, D) -> (e4m3 tensor, (B, H) float32 descale, mean subtracted (B, 1, H, D) or None).

    The scale of each (sample, head) maps its amax over the valid tokens to 448 (`per_tensor`: one amax
    over everything, for kernels that take one scale). `smooth` subtracts the per-channel mean over the
    valid tokens first."""
    m = valid[:, :, None, None]
    # where, not a product with the mask: padded tokens may hold NaN (torchao's float8 linears give NaN for
    # an all-zero row, which padded text tokens are), and NaN * 0 would spread it to every scale and mean.
    xf = torch.where(m, x.float(), 0.0)
    mean = None
    if smooth:
        mean = xf.sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1)
        xf = torch.where(m, xf - mean, 0.0)
    amax = xf.abs().amax(dim=(1, 3))
    if per_tensor:
        amax = amax.amax().expand_as(amax)
    amax = amax.clamp_min(1e-8)
    scale = E4M3_MAX / amax
    x8 = (xf * scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return x8, (amax / E4M3_MAX).contiguous(), mean


def quantize_one_pass(x: torch.Tensor, valid: torch.Tensor):
    """quantize(x, valid, smooth=True) with its statistics in one reduction over the tokens rather than
    two: the per-channel sum, max and min give the mean and max |x - mean| = max(max - mean, mean - min)
    exactly (subtracting a constant is monotonic under rounding), so the e4m3 values are the same math.
    Not folded into `quantize`: compiled, three fused reductions may sum the mean in another order than
    one, and the v1 recipe's recorded jobs keep their bits."""
    m = valid[:, :, None, None]
    xf = x.float()
    count = m.sum(dim=1, keepdim=True).clamp_min(1)
    mean = torch.where(m, xf, 0.0).sum(dim=1, keepdim=True) / count
    hi = torch.where(m, xf, float("-inf")).amax(dim=1, keepdim=True)
    lo = torch.where(m, xf, float("inf")).amin(dim=1, keepdim=True)
    amax = torch.maximum(hi - mean, mean - lo).amax(dim=3)[:, 0].clamp_min(1e-8)  # (B, H)
    scale = E4M3_MAX / amax
    x8 = torch.where(m, (xf - mean) * scale[:, None, :, None], 0.0).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return x8, (amax / E4M3_MAX).contiguous(), mean


def quantize_bounded(x: torch.Tensor, bound: torch.Tensor):
    """e4m3 with a scale known before x is: `bound` (a 0-d tensor) >= every |x|. No reduction over the
    tokens, so the cast fuses into the kernel that makes x (the rotary embedding). e4m3 is a floating
    format: a scale that maps the largest possible value rather than the largest actual one to 448 costs
    no relative precision, only the subnormal range far below the values that matter."""
    b, _, h, _ = x.shape
    bound = bound.float().clamp_min(1e-8)
    x8 = (x.float() * (E4M3_MAX / bound)).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return x8, (bound / E4M3_MAX).expand(b, h).contiguous()


def rms_norm_bound(*norms) -> torch.Tensor:
    """Largest |value| an RMSNorm over D channels with these weights can output, rotary applied after or
    not: the normalised vector has length sqrt(D) (less with eps), each output channel is at most that
    times max |weight|, and the rotary embedding turns pairs of channels without lengthening them.
    1% over, for bf16 rounding on the way."""
    w = torch.stack([n.weight.detach().abs().amax().float() for n in norms]).amax()
    return w * (norms[0].weight.shape[-1] ** 0.5) * 1.01


def attention_fp8_bounded(q, k, v, key_valid, q_bound: torch.Tensor, kernel: str = "fa3-batched") -> torch.Tensor:
    """The v2 recipe: Q scaled by its static bound (no reduction), K and V mean-smoothed with one-pass
    statistics, the masking and V's mean fused after the kernel. bf16 out."""
    q8, qd = quantize_bounded(q, q_bound)
    k8, kd, _ = quantize_one_pass(k, key_valid)
    v8, vd, v_mean = quantize_one_pass(v, key_valid)
    out = joint_attention_fp8_raw(q8, k8, v8, qd, kd, vd, key_valid, kernel)
    return torch.where(key_valid[:, :, None, None], out.float() + v_mean, 0.0).to(torch.bfloat16)


def attention_fp8(q, k, v, key_valid, kernel: str = DEFAULT_KERNEL, *, smooth_k: bool = True,
                  smooth_v: bool = False, per_tensor: bool | None = None) -> torch.Tensor:
    """The joint attention in fp8: quantize, attend, add V's mean back if it was taken out. bf16 out."""
    if per_tensor is None:
        per_tensor = kernel == "cudnn"  # cuDNN's fp8 SDPA takes one scale per tensor
    q8, qd, _ = quantize(q, key_valid, per_tensor=per_tensor)
    k8, kd, _ = quantize(k, key_valid, smooth=smooth_k, per_tensor=per_tensor)
    v8, vd, v_mean = quantize(v, key_valid, smooth=smooth_v, per_tensor=per_tensor)
    out = joint_attention_fp8(q8, k8, v8, qd, kd, vd, key_valid, kernel)
    if v_mean is not None:
        out = torch.where(key_valid[:, :, None, None], out.float() + v_mean, 0.0).to(out.dtype)
    return out


# -- the processor ---------------------------------------------------------------------------------------
class Fp8MochiAttnProcessor(BatchgenMochiAttnProcessor):
    """batchgen's exact processor (same projections, norms, rotary, output) with the attention core in fp8."""

    def __init__(self, kernel: str = DEFAULT_KERNEL, *, smooth_k: bool = True, smooth_v: bool = False):
        if kernel not in KERNELS:
            raise ValueError(f"unknown fp8 attention kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
        self.kernel, self.smooth_k, self.smooth_v = kernel, smooth_k, smooth_v
        self.backend = f"fp8-{kernel}"

    def _attend(self, query, key, value, key_valid, dtype: torch.dtype, attn=None) -> torch.Tensor:
        return attention_fp8(query, key, value, key_valid, self.kernel, smooth_k=self.smooth_k,
                             smooth_v=self.smooth_v).to(dtype)


class Fp8BoundedMochiAttnProcessor(Fp8MochiAttnProcessor):
    """The v2 recipe (attention_fp8_bounded): Q's scale from the block's query RMSNorm weights."""

    def __init__(self, kernel: str = "fa3-batched"):
        super().__init__(kernel, smooth_k=True, smooth_v=True)
        self.backend = f"fp8b-{kernel}"

    def _attend(self, query, key, value, key_valid, dtype: torch.dtype, attn=None) -> torch.Tensor:
        bound = rms_norm_bound(attn.norm_q, attn.norm_added_q)
        return attention_fp8_bounded(query, key, value, key_valid, bound, self.kernel).to(dtype)


def install(transformer, kernel: str = DEFAULT_KERNEL, *, bounded: bool = False, **options) -> str:
    """Put Fp8MochiAttnProcessor (`bounded`: the v2 recipe's) on every block; returns the name recorded as
    the attention backend."""
    processor = Fp8BoundedMochiAttnProcessor(kernel) if bounded else Fp8MochiAttnProcessor(kernel, **options)
    return put_processor(transformer, processor)


def put_processor(transformer, processor) -> str:
    """`processor` on every block, recorded as the attention backend; returns its name."""
    refuse_on_halved_channels(transformer, processor)
    for block in transformer.transformer_blocks:
        block.attn1.processor = processor
    state(transformer).attention = processor.backend
    return processor.backend


# -- availability ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def unavailable(device: str, kernel: str = DEFAULT_KERNEL) -> str | None:
    """None when `kernel` runs fp8 attention on `device`, else why not (probed once per device)."""
    if kernel == "emulated":
        return None
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "fp8 attention needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < MIN_CAPABILITY or (kernel.startswith("fa3") and major != 9):
        return (f"fp8 attention ({kernel}) needs a Hopper GPU (compute capability 9.0, e.g. H100/H200); "
                f"this one is {major}.{minor}")
    if kernel.startswith("fa3") and fa3_module() is None:
        return "fp8 attention needs FlashAttention-3: pip install fa3-fwd (or pip install -e \".[fp8-attn]\")"
    if kernel == "cudnn":
        try:
            importlib.import_module("cudnn")
        except Exception as exc:  # noqa: BLE001
            return f"fp8 attention ({kernel}) needs nvidia-cudnn-frontend: {exc}"
    # The capability is not the whole story (a wheel built for another torch, a driver): try it, small.
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(2, 160, 2, 128, generator=gen).to(device, torch.bfloat16) for _ in range(3))
        valid = torch.ones(2, 160, dtype=torch.bool)
        valid[0, 150:] = False
        valid = valid.to(device)
        got = attention_fp8(q, k, v, valid, kernel).float()
        want = attention_fp8(q, k, v, valid, "emulated").float()
        err = float((got - want).norm() / want.norm())
    except Exception as exc:  # noqa: BLE001 - any failure means the profile cannot run here
        return f"fp8 attention ({kernel}) does not run on {device}: {type(exc).__name__}: {exc}"
    if not err < 0.1:
        return f"fp8 attention ({kernel}) disagrees with its reference on {device} (rel. L2 {err:.3f})"
    return None
