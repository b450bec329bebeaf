"""Old flat config keys -> the variant options that replaced them (issue 24): old run directories'
config.json load through this map, a typed old key gets one line naming its new spelling, and
scripts/migrate_config_keys.py rewrites preset and sweep files. A key whose options several
variants share maps to each of them (the selected one keeps the value). JAX-free."""

from __future__ import annotations


def _variant(section: str, variant: str, prefix: str, fields: str, **renamed: str) -> dict:
    """`section.<prefix><field>` -> `section.variant.<field>` for each field, plus explicit ones."""
    out = {f"{section}.{prefix}{f}": f"{section}.{variant}.{f}" for f in fields.split()}
    out.update({f"{section}.{old}": f"{section}.{variant}.{new}" for old, new in renamed.items()})
    return out


_TABLES = [
    _variant("model", "mla", "", "", mla_latent="latent_dim"),
    _variant("model", "lowrank", "", "attn_rank mlp_rank", linear_rank="rank"),
    _variant("model", "rlma", "", "attn_rank mlp_rank", linear_rank="rank"),
    _variant("model", "monarch", "monarch_", "blocks"),
    _variant("model", "s4d_lin", "ssm_", "inner kernel"),
    _variant("model", "act", "act_", "max_steps threshold halt_bias ponder_cost"),
    _variant("model", "ut_shared", "ut_", "iterations residual branch_scale_init"),
    _variant("model", "basis", "basis_", "rank"),
    _variant("model", "hypernet", "hypernet_", "rank embed_dim hidden"),
    _variant("model", "siren", "siren_", "hidden layers omega chunk"),
    _variant("model", "nca", "nca_", "steps channels hidden update_prob", generator_seed="generator_seed"),
    _variant("model", "seed", "seed_", "dim chunk", generator_seed="generator_seed"),
    _variant("model", "mps", "mps_", "bond_dim pos_dim max_len"),
    _variant("model", "hopfield", "hopfield_", "refine_steps refine_alpha"),
    _variant("model", "agents", "agents_", "msg_dim local_ctx decoder_hidden loss_stride"),
    _variant("model", "surge_m", "surge_", "mode layer chunk d_err d_state gate_bias forget_bias uv_init_std"),
    _variant("eval", "ttt", "ttt_", "lr epochs momentum chunk_tokens batch_seqs grad_clip"),
    _variant("eval", "lora_ttt", "lora_", "rank alpha targets lr optimizer beta1 beta2 eps wd warm_start_a steps "
             "chunk_tokens batch_docs phases phase_prefix_docs phase_lr", ttt_momentum="momentum",
             ttt_chunk_tokens="phase_chunk_tokens", ttt_batch_seqs="phase_batch_seqs",
             ttt_grad_clip="phase_grad_clip"),
    _variant("quant", "gptq", "gptq_", "calibration_batches block_size damp act_order"),
    _variant("quant", "zstd", "", "level"),
    _variant("train", "distill", "distill_", "alpha temperature", teacher="teacher"),
]

RENAMES: dict[str, tuple[str, ...]] = {}
for _table in _TABLES:
    for _old, _new in _table.items():
        RENAMES[_old] = RENAMES.get(_old, ()) + (_new,)


def renamed(key: str) -> str:
    """The line for a typed old key ("" for any other)."""
    if key not in RENAMES:
        return ""
    return (f"config key {key!r} was renamed: use {' or '.join(map(repr, RENAMES[key]))} "
            "(scripts/migrate_config_keys.py rewrites preset files)")
