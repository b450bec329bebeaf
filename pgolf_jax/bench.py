"""`run.py bench`: train-step speed on synthetic tokens, FLOPs, MFU against a measured GEMM peak,
and optionally the reference's own PyTorch GPT timed on the same shapes (loaded from the user's
train_gpt.py at run time, never vendored)."""

from __future__ import annotations

import importlib.util
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import config as config_lib
from pgolf_jax import dist, registry
from pgolf_jax.config import Config
from pgolf_jax.errors import arg_parser, non_negative_int, positive_int
from pgolf_jax.model import attention as attention_lib
from pgolf_jax.model.flops import analytic_flops_per_token
from pgolf_jax.quant.interop import reference_gpt_kwargs


def muon_flops_per_step(cfg: Config) -> float:
    """Newton-Schulz FLOPs of one optimizer step (every block matrix, wide orientation)."""
    from pgolf_jax.optim.orthogonalize import (
        gram_newton_schulz_flops,
        newton_schulz_flops,
    )
    m, o = cfg.model, cfg.optim
    kv = m.model_dim // m.num_heads * m.num_kv_heads
    hidden = int(m.mlp_mult * m.model_dim)
    shapes = [(m.model_dim, m.model_dim)] * 2 + [(kv, m.model_dim)] * 2 + [(hidden, m.model_dim)] * 2
    total = 0.0
    for r, c in shapes:
        gram = o.gram_ns_min_aspect and max(r, c) / min(r, c) >= o.gram_ns_min_aspect
        total += (gram_newton_schulz_flops if gram else newton_schulz_flops)(r, c, o.muon_backend_steps)
    return total * m.num_layers


def gemm_peak(dtype=jnp.float32, sizes=(1024, 2048), reps: int = 10) -> float:
    """Best observed FLOP/s of a square matmul on the default device (the MFU denominator).
    For bf16 the product accumulates in fp32, the form the model and Newton-Schulz use."""
    best = 0.0
    for n in sizes:
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
        f(a).block_until_ready()
        for _ in range(reps):
            t = time.perf_counter()
            f(a).block_until_ready()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def _times(fn, *args, steps: int = 5, warmup: int = 1) -> list[float]:
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def _median_time(fn, *args, steps: int = 5, warmup: int = 1) -> float:
    return statistics.median(_times(fn, *args, steps=steps, warmup=warmup))


def time_attention_impls(cfg: Config, batch: int, seq: int, impls: list[str], reps: int = 30) -> dict:
    """One layer's attention at the config's shape per implementation: (forward, forward+backward)
    seconds, min over `reps` (the minimum is the stable statistic on a noisy VM)."""
    m = cfg.model
    K = m.model_dim // m.num_heads
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, seq, m.num_heads, K))
    k, v = (jax.random.normal(kk, (batch, seq, m.num_kv_heads, K)) for kk in keys[1:])
    out = {}
    for impl in impls:
        fwd = jax.jit(lambda q, k, v, impl=impl: attention_lib.causal_attention(q, k, v, impl))
        fwd_bwd = jax.jit(jax.grad(lambda q, k, v, impl=impl: attention_lib.causal_attention(q, k, v, impl).sum(),
                                   argnums=(0, 1, 2)))
        out[impl] = {name: min(_times(f, q, k, v, steps=reps)) for name, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd))}
    return out


def time_parts(cfg: Config, batch: int, seq: int, steps: int) -> dict:
    """Where a step goes: forward+backward, the optimizer update, and attention alone."""
    from pgolf_jax.model.attention import causal_attention
    from pgolf_jax.model.gpt import build_model, resolve_dtype
    from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer

    m = cfg.model
    model = build_model(m)
    params = jax.jit(model.init)(jax.random.key(0))
    ids = jnp.zeros((batch, seq), jnp.int32)
    fwd_bwd = _median_time(jax.jit(jax.grad(model.loss)), params, ids, ids, steps=steps)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e-3, p.dtype), params)

    def optimizer_time(c: Config) -> float:
        tx = make_optimizer(c, resolve_dtype(c.optim.muon_dtype), labels_from_specs(model.param_specs()))
        update = jax.jit(lambda g, s, p: tx.update(g, s, p, lr_mul=1.0))
        return _median_time(update, grads, tx.init(params), params, steps=steps)

    opt = optimizer_time(cfg)
    # Gram Newton-Schulz on: the same update with it off, for its FLOP and time saving.
    opt_plain_ns = optimizer_time(config_lib.override(cfg, {"optim.gram_ns_min_aspect": 0.0})) \
        if cfg.optim.gram_ns_min_aspect else None
    K, dt = m.model_dim // m.num_heads, resolve_dtype(m.compute_dtype)
    q = jnp.ones((batch, seq, m.num_heads, K), dt)
    kv = jnp.ones((batch, seq, m.num_kv_heads, K), dt)
    attn = jax.jit(jax.grad(lambda q, k, v: causal_attention(q, k, v, m.attention_impl).astype(jnp.float32).sum(),
                            argnums=(0, 1, 2)))
    return {"fwd_bwd_s": fwd_bwd, "optimizer_s": opt, "optimizer_plain_ns_s": opt_plain_ns,
            "attention_s": m.num_layers * _median_time(attn, q, kv, kv, steps=steps)}


def peak_memory_bytes() -> tuple[int, str]:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def time_jax(cfg: Config, batch: int, seq: int, steps: int, warmup: int, micro: int = 1) -> dict:
    """Our train step on `micro` accumulated micro-batches of batch x seq tokens each."""
    from pgolf_jax.train.loop import build
    from pgolf_jax.train.step import make_train_step

    mesh = dist.make_mesh()
    model, tx, state = build(cfg, mesh)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, cfg.model.vocab_size, (micro, batch, seq), dtype=np.int32))
    y = jnp.asarray(rng.integers(0, cfg.model.vocab_size, (micro, batch, seq), dtype=np.int32))
    step = jax.jit(make_train_step(model, tx), donate_argnums=(0,))
    t = time.perf_counter()
    compiled = step.lower(state, x, y, 1.0, 0.0).compile()
    compile_s = time.perf_counter() - t
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        state, m = compiled(state, x, y, 1.0, 0.0)
        jax.block_until_ready(m)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "step_s": statistics.median(times), "times": times,
            "loss": float(m["train_loss"])}


def xla_flops_per_step(cfg: Config, batch: int, seq: int) -> float:
    """XLA's cost analysis of an unrolled-layer step (a scan body would be counted only once)."""
    from pgolf_jax.train.loop import build
    from pgolf_jax.train.step import make_train_step

    # XLA cannot see inside the native attention kernel's FFI call; count the XLA path instead.
    impl = "xla" if attention_lib.resolve_impl(cfg.model.attention_impl, jnp.float32) == "fused_cpu" \
        else cfg.model.attention_impl
    cfg = config_lib.override(cfg, {"model.scan_layers": False, "model.attention_impl": impl})
    model, tx, state = build(cfg, dist.make_mesh())
    x = jax.ShapeDtypeStruct((1, batch, seq), jnp.int32)
    cost = jax.jit(make_train_step(model, tx)).lower(state, x, x, 1.0).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def time_torch_reference(path: str, cfg: Config, batch: int, seq: int, steps: int, warmup: int, micro: int = 1,
                         compile_model: bool = False) -> dict:
    """The reference GPT + its Muon/Adam split from the user's train_gpt.py: on CPU fp32 eager; on
    a GPU as the challenge runs it (bf16 autocast, optionally torch.compile), `micro` accumulated
    micro-batches per step."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("--vs-torch-reference needs torch: pip install 'pgolf_jax[torch]'") from None
    spec = importlib.util.spec_from_file_location("pgolf_reference_train_gpt", path)
    if spec is None:
        raise FileNotFoundError(f"cannot load {path}")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    m, o = cfg.model, cfg.optim
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gpt = ref.GPT(**reference_gpt_kwargs(m)).to(dev)
    if dev == "cuda":  # the reference's own set-up: bf16 model, fp32 CastedLinear masters
        gpt = gpt.bfloat16()
        for mod in gpt.modules():
            if isinstance(mod, getattr(ref, "CastedLinear", ())):
                mod.float()
        if hasattr(ref, "restore_low_dim_params_to_fp32"):
            ref.restore_low_dim_params_to_fp32(gpt)
    fwd = torch.compile(gpt, dynamic=False) if compile_model else gpt
    pats = ref.CONTROL_TENSOR_NAME_PATTERNS
    named = list(gpt.blocks.named_parameters())
    mats = [p for n, p in named if p.ndim == 2 and not any(c in n for c in pats)]
    scal = [p for n, p in named if p.ndim < 2 or any(c in n for c in pats)] + [gpt.skip_weights]
    adam = dict(betas=(o.beta1, o.beta2), eps=o.adam_eps)
    opts = [torch.optim.Adam([gpt.tok_emb.weight], lr=o.tied_embed_lr, **adam),
            ref.Muon(mats, lr=o.matrix_lr, momentum=o.muon_momentum, backend_steps=o.muon_backend_steps),
            torch.optim.Adam(scal, lr=o.scalar_lr, **adam)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, m.vocab_size, (micro, batch, seq), generator=gen).to(dev)
    y = torch.randint(0, m.vocab_size, (micro, batch, seq), generator=gen).to(dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if dev == "cuda" else \
        __import__("contextlib").nullcontext()
    times, fwd_bwd, optimizer = [], [], []
    t_first = time.perf_counter()
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        for a in range(micro):
            with autocast:
                loss = fwd(x[a], y[a])
            (loss / micro).backward()
        sync()
        t1 = time.perf_counter()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        if i == 0:
            first_s = t2 - t_first  # includes torch.compile's compilation
        if i >= warmup:
            times.append(t2 - t0)
            fwd_bwd.append(t1 - t0)
            optimizer.append(t2 - t1)
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return {"step_s": statistics.median(times), "times": times, "threads": torch.get_num_threads(),
            "fwd_bwd_s": statistics.median(fwd_bwd), "optimizer_s": statistics.median(optimizer), "device": dev,
            "first_step_s": first_s, "peak_bytes": peak, "compiled": compile_model}


def main(argv: list[str]) -> int:
    p = arg_parser()(prog="run.py bench", description="Time the train step on synthetic tokens.")
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=positive_int, default=1, help="sequences per step (default 1)")
    p.add_argument("--seq", type=non_negative_int, default=0, help="sequence length (default train.train_seq_len)")
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--no-xla-flops", action="store_true", help="skip the unrolled compile for XLA's FLOP count")
    p.add_argument("--parts", action="store_true", help="also time forward+backward, optimizer and attention alone")
    p.add_argument("--micro", type=positive_int, default=1, help="micro-batches accumulated per step (default 1; the "
                   "challenge's per-GPU step: --batch 64 --micro 8 at seq 1024)")
    p.add_argument("--vs-torch-reference", metavar="TRAIN_GPT_PY", help="also time the reference PyTorch GPT")
    p.add_argument("--torch-compile", action="store_true",
                   help="torch.compile the reference (as the challenge runs it)")
    p.add_argument("--attention", metavar="IMPL[,IMPL]", help="also time one layer's attention per "
                   "implementation (xla, flash, fused_cpu, ...), min of 30")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    a = p.parse_args(argv)
    cfg = config_lib.load(a.config, a.overrides)
    seq = a.seq or cfg.train.train_seq_len
    tokens = a.batch * seq * a.micro
    print(f"bench config:{a.config} backend:{jax.default_backend()} devices:{jax.device_count()} "
          f"batch:{a.micro}x{a.batch}x{seq} tokens/step:{tokens} compute_dtype:{cfg.model.compute_dtype}")
    r = time_jax(cfg, a.batch, seq, a.steps, a.warmup, a.micro)
    fl = analytic_flops_per_token(cfg.model, seq)
    ns = muon_flops_per_step(cfg)
    model_flops = (fl["matmul"] + fl["attn_causal"]) * tokens
    from pgolf_jax.model.gpt import resolve_dtype
    peak32, peak16 = gemm_peak(jnp.float32), gemm_peak(jnp.bfloat16)
    compute_peak = peak16 if jnp.dtype(resolve_dtype(cfg.model.compute_dtype)) == jnp.bfloat16 else peak32
    ns_peak = peak16 if jnp.dtype(resolve_dtype(cfg.optim.muon_dtype)) == jnp.bfloat16 else peak32
    mem, mem_kind = peak_memory_bytes()
    tok_s = tokens / r["step_s"]
    print(f"compile_time:{r['compile_s']:.2f}s step_time:{1000 * r['step_s']:.1f}ms "
          f"(min {1000 * min(r['times']):.1f} max {1000 * max(r['times']):.1f}) tokens_per_s:{tok_s:.1f}")
    print(f"peak_memory:{mem / 2**20:.0f}MiB ({mem_kind})")
    print(f"flops_per_token_analytic: matmul:{fl['matmul'] / 1e6:.1f}M attn_causal:{fl['attn_causal'] / 1e6:.1f}M "
          f"attn_full:{fl['attn_full'] / 1e6:.1f}M total_causal:{(fl['matmul'] + fl['attn_causal']) / 1e6:.1f}M")
    print(f"muon_ns_flops_per_step:{ns / 1e9:.1f}G ({ns / tokens / 1e6:.1f}M per token at this batch)")
    if not a.no_xla_flops:
        xf = xla_flops_per_step(cfg, a.batch, seq)
        print(f"flops_per_token_xla:{xf / tokens / 1e6:.1f}M (unrolled step, includes optimizer and masked attention)")
    # MFU counts model FLOPs against the compute dtype's GEMM peak; the optimizer's Newton-Schulz
    # FLOPs (which dominate at small batches) are counted against their own dtype's peak.
    busy = model_flops / compute_peak + ns / ns_peak
    print(f"gemm_peak:fp32 {peak32 / 1e9:.1f}GFLOP/s bf16 {peak16 / 1e9:.1f}GFLOP/s "
          f"achieved_model:{model_flops / r['step_s'] / 1e9:.1f}GFLOP/s "
          f"mfu:{100 * model_flops / r['step_s'] / compute_peak:.1f}% "
          f"with_optimizer:{100 * busy / r['step_s']:.1f}%")
    if a.parts:
        parts = time_parts(cfg, a.batch, seq, a.steps)
        print(f"parts: fwd_bwd:{1000 * parts['fwd_bwd_s']:.1f}ms optimizer:{1000 * parts['optimizer_s']:.1f}ms "
              f"attention_fwd_bwd:{1000 * parts['attention_s']:.1f}ms (all layers, inside fwd_bwd)")
        if parts["optimizer_plain_ns_s"] is not None:
            plain = muon_flops_per_step(config_lib.override(cfg, {"optim.gram_ns_min_aspect": 0.0}))
            print(f"gram_ns: muon_flops {ns / 1e9:.2f}G vs plain NS {plain / 1e9:.2f}G "
                  f"({100 * (1 - ns / plain):.0f}% fewer); optimizer {1000 * parts['optimizer_s']:.1f}ms vs "
                  f"{1000 * parts['optimizer_plain_ns_s']:.1f}ms plain NS")
    if a.attention:
        impls = a.attention.split(",")
        unknown = [i for i in impls if i not in registry.ATTENTION_IMPLS]
        if unknown:
            raise config_lib.ConfigError(f"--attention: unknown implementation(s) {unknown}; "
                             f"expected from {sorted(registry.ATTENTION_IMPLS)}")
        for impl, t in time_attention_impls(cfg, a.batch, seq, impls).items():
            print(f"attention impl:{impl} fwd:{1000 * t['fwd']:.1f}ms fwd_bwd:{1000 * t['fwd_bwd']:.1f}ms "
                  f"(one layer, min of 30)")
    if a.vs_torch_reference:
        t = time_torch_reference(a.vs_torch_reference, cfg, a.batch, seq, a.steps, a.warmup, a.micro,
                                 a.torch_compile)
        ref_tok_s = tokens / t["step_s"]
        how = ("bf16 autocast" if t["device"] == "cuda" else "fp32") + (" torch.compile" if t["compiled"] else " eager")
        print(f"torch_reference step_time:{1000 * t['step_s']:.1f}ms tokens_per_s:{ref_tok_s:.1f} "
              f"threads:{t['threads']} device:{t['device']} ({how}) first_step:{t['first_step_s']:.2f}s"
              + (f" peak_memory:{t['peak_bytes'] / 2**20:.0f}MiB" if t["peak_bytes"] else ""))
        print(f"torch_reference mfu:{100 * model_flops / t['step_s'] / compute_peak:.1f}% (same FLOP count and peak)")
        print(f"torch_reference parts: fwd_bwd:{1000 * t['fwd_bwd_s']:.1f}ms optimizer:{1000 * t['optimizer_s']:.1f}ms")
        print(f"speedup_vs_reference:{tok_s / ref_tok_s:.2f}x")
        if a.parts:  # per part, so a slow path on one side (e.g. bf16 without CPU support) is visible
            print(f"speedup_fwd_bwd:{t['fwd_bwd_s'] / parts['fwd_bwd_s']:.2f}x "
                  f"speedup_optimizer:{t['optimizer_s'] / parts['optimizer_s']:.2f}x")
    sys.stdout.flush()
    return 0
