"""The inverse of diffusers' `convert_mochi_transformer_checkpoint_to_diffusers`: a diffusers Mochi
transformer's state dict in the original (genmo / Comfy single-file) key names, for the single-file test.
diffusers' converter hard-codes 48 blocks, so the transformer must have 48 (tiny ones are fine)."""

from __future__ import annotations

import torch


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    # diffusers' swap_proj_gate and swap_scale_shift both exchange the two halves along dim 0: self-inverse.
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


_TOP = {
    "patch_embed.proj.weight": "x_embedder.proj.weight", "patch_embed.proj.bias": "x_embedder.proj.bias",
    "time_embed.timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
    "time_embed.timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
    "time_embed.timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
    "time_embed.timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
    "time_embed.pooler.to_kv.weight": "t5_y_embedder.to_kv.weight", "time_embed.pooler.to_kv.bias": "t5_y_embedder.to_kv.bias",
    "time_embed.pooler.to_q.weight": "t5_y_embedder.to_q.weight", "time_embed.pooler.to_q.bias": "t5_y_embedder.to_q.bias",
    "time_embed.pooler.to_out.weight": "t5_y_embedder.to_out.weight",
    "time_embed.pooler.to_out.bias": "t5_y_embedder.to_out.bias",
    "time_embed.caption_proj.weight": "t5_yproj.weight", "time_embed.caption_proj.bias": "t5_yproj.bias",
    "proj_out.weight": "final_layer.linear.weight", "proj_out.bias": "final_layer.linear.bias",
    "pos_frequencies": "pos_frequencies",
}
_BLOCK = {
    "norm1.linear.weight": "mod_x.weight", "norm1.linear.bias": "mod_x.bias",
    "norm1_context.linear.weight": "mod_y.weight", "norm1_context.linear.bias": "mod_y.bias",
    "norm1_context.linear_1.weight": "mod_y.weight", "norm1_context.linear_1.bias": "mod_y.bias",
    "attn1.norm_q.weight": "attn.q_norm_x.weight", "attn1.norm_k.weight": "attn.k_norm_x.weight",
    "attn1.to_out.0.weight": "attn.proj_x.weight", "attn1.to_out.0.bias": "attn.proj_x.bias",
    "attn1.norm_added_q.weight": "attn.q_norm_y.weight", "attn1.norm_added_k.weight": "attn.k_norm_y.weight",
    "attn1.to_add_out.weight": "attn.proj_y.weight", "attn1.to_add_out.bias": "attn.proj_y.bias",
    "ff.net.2.weight": "mlp_x.w2.weight", "ff_context.net.2.weight": "mlp_y.w2.weight",
}


def to_original(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    out = {new: state[old] for old, new in _TOP.items()}
    out["final_layer.mod.weight"] = _swap_halves(state["norm_out.linear.weight"])
    out["final_layer.mod.bias"] = _swap_halves(state["norm_out.linear.bias"])
    for i in range(num_layers):
        p, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        for old, new in _BLOCK.items():
            if p + old in state:
                out[o + new] = state[p + old]
        out[o + "attn.qkv_x.weight"] = torch.cat([state[p + f"attn1.to_{x}.weight"] for x in "qkv"], dim=0)
        out[o + "attn.qkv_y.weight"] = torch.cat([state[p + f"attn1.add_{x}_proj.weight"] for x in "qkv"], dim=0)
        out[o + "mlp_x.w1.weight"] = _swap_halves(state[p + "ff.net.0.proj.weight"])
        if p + "ff_context.net.0.proj.weight" in state:
            out[o + "mlp_y.w1.weight"] = _swap_halves(state[p + "ff_context.net.0.proj.weight"])
    return {k: v.contiguous() for k, v in out.items()}
