import statistics, time, torch
from batchgen.engine import realsize, placement, profiles
from batchgen.engine.module_state import state
print(profiles.resolve("fp8-attn", "cuda"), flush=True)
pipe = realsize.build_realsize_pipeline("cuda"); pipe.text_encoder.to("cpu"); torch.cuda.empty_cache()
placement.prepare_denoiser(pipe, "fp8-attn", "cuda", quality=False)
print("attention:", state(pipe.transformer).attention, "fp8 linears:", state(pipe.transformer).fp8_linears, "compiled:", state(pipe.transformer).compiled, flush=True)
g = torch.Generator("cpu").manual_seed(7)
pos, neg = (torch.randn(1, 256, 4096, generator=g).to("cuda", torch.bfloat16) for _ in range(2))
pm = torch.zeros(1, 256, dtype=torch.long); pm[0, :21] = 1; nm = torch.zeros(1, 256, dtype=torch.long); nm[0, :9] = 1
marks = []
def mark(p, i, t, kw):
    torch.cuda.synchronize(); marks.append(time.perf_counter()); return kw
t0 = time.perf_counter()
with torch.inference_mode():
    out = pipe(prompt_embeds=pos, prompt_attention_mask=pm.cuda(), negative_prompt_embeds=neg, negative_prompt_attention_mask=nm.cuda(),
               num_frames=25, height=480, width=848, num_inference_steps=8, guidance_scale=4.5, generator=torch.Generator("cpu").manual_seed(0),
               output_type="latent", max_sequence_length=256, callback_on_step_end=mark)
gaps = [b - a for a, b in zip(marks, marks[1:])]
print("fp8-attn through placement, 25 frames, 8 steps: total %.1f s, s/step %.4f, finite %s" % (time.perf_counter() - t0, statistics.median(gaps), bool(torch.isfinite(out.frames).all())), flush=True)
