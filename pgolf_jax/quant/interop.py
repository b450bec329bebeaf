"""Reference-named flat state dicts, and reading the reference's PyTorch files.

Our parameter tree mirrors the reference module tree, with block parameters stacked on a leading
layer axis; flattening unstacks them, so `blocks/attn/c_q/weight[i]` is `blocks.{i}.attn.c_q.weight`,
exactly the name in a train_gpt.py state dict. torch is imported only by the loaders (optional extra).
"""

from __future__ import annotations

import io
import pickle
import zlib
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from pgolf_jax.model.params import is_stacked, layer_names, path_name


def split_layers(name: str, arr) -> dict:
    """{name: arr}, or for a stacked block tensor {"blocks.<i>.<rest>": arr[i]} per layer."""
    if not is_stacked(name):
        return {name: arr}
    return {key: arr[i] for i, key in enumerate(layer_names(name, arr.shape[0]))}


def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested params -> {reference name: numpy array}, block parameters split per layer."""
    out: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        out.update(split_layers(path_name(path), np.asarray(jax.device_get(leaf))))
    return out


def unflatten_params(named: dict[str, np.ndarray], template, source: str = "state dict"):
    """Inverse of flatten_params against a template tree (shapes and dtypes are checked/cast)."""
    used = set()

    def fill(path, leaf):
        name = path_name(path)
        if is_stacked(name):
            keys = layer_names(name, leaf.shape[0])
            parts = [_take(named, k, leaf.shape[1:], source) for k in keys]
            used.update(keys)
            arr = np.stack(parts)
        else:
            arr = _take(named, name, leaf.shape, source)
            used.add(name)
        return np.asarray(arr).astype(leaf.dtype)

    tree = jax.tree_util.tree_map_with_path(fill, template)
    extra = sorted(set(named) - used)
    if extra:
        raise ValueError(f"{source}: unexpected keys not in this model: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    return tree


def _take(named, key, shape, source):
    if key not in named:
        raise ValueError(f"{source}: missing key {key!r}")
    arr = named[key]
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{source}: {key} has shape {tuple(arr.shape)}, the model expects {tuple(shape)}")
    return arr


# ---------------------------------------------------------------------------------------------
# PyTorch files (optional extra `torch`)

def _torch():
    try:
        import torch
    except ImportError:
        raise RuntimeError("reading PyTorch files needs torch: pip install 'pgolf_jax[torch]'") from None
    return torch


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    if t.dtype == torch.bfloat16:
        return t.detach().float().cpu().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().cpu().numpy()


def _torch_load(data, path: Path, what: str):
    """torch.load with weights_only=True (an untrusted file may hold code; it only ever gets tensors
    and plain containers). A file that needs more is refused in one line: torch's own message runs to
    600 characters and advises weights_only=False, which would run whatever the file holds."""
    import warnings

    torch = _torch()
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": torch's noise, not ours to show
            warnings.simplefilter("ignore")
            return torch.load(data, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any failure of an untrusted file is "not readable"
        why = ("its pickle asks for more than tensors and plain containers, which is never loaded"
               if isinstance(exc, pickle.UnpicklingError) else f"no torch.save file: {type(exc).__name__}")
        raise ValueError(f"{path}: not a readable {what} ({why})") from None


def _tensor_dict(obj, path: Path, what: str) -> dict:
    """{name: tensor} checked: a dict of tensors under string names, nothing else."""
    torch = _torch()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a readable {what} (it holds a {type(obj).__name__}, not a dict)")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: not a readable {what} (entry {str(k)[:60]!r} is a {type(v).__name__}, "
                             "not a tensor)")
    return obj


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A reference `final_model.pt` (torch.save of GPT.state_dict()) as numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torch state dict not found: {path}")
    sd = _tensor_dict(_torch_load(path, path, "torch state dict"), path, "torch state dict")
    return {k: _to_numpy(v) for k, v in sd.items()}


def load_reference_int8_ptz(path: str | Path) -> dict[str, np.ndarray]:
    """The reference's `final_model.int8.ptz` (int8_clean_per_row_v1 + zlib), dequantized."""
    from pgolf_jax.quant.export import dequantize_int8

    what = "reference int8+zlib artifact"
    path = Path(path)
    try:
        raw = zlib.decompress(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, zlib.error) as exc:
        raise ValueError(f"{path}: not a {what} ({type(exc).__name__}: {exc})") from None
    obj = _torch_load(io.BytesIO(raw), path, what)
    if not isinstance(obj, dict) or obj.get("__quant_format__") != "int8_clean_per_row_v1":
        found = repr(obj.get("__quant_format__"))[:60] if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ValueError(f"{path}: not a {what} (quant format {found}, not int8_clean_per_row_v1)")
    conv = {k: ({n: _to_numpy(t) for n, t in _tensor_dict(v, path, what).items()} if isinstance(v, dict) and k in
                ("quantized", "scales", "passthrough") else v) for k, v in obj.items()}
    return dequantize_int8(conv)


def reference_gpt_kwargs(m) -> dict:
    """Constructor arguments of the reference train_gpt.py GPT for a ModelConfig (the reference
    takes an integer MLP multiplier: hidden = mlp_mult * dim)."""
    if float(m.mlp_mult) != int(m.mlp_mult):
        raise ValueError(f"model.mlp_mult={m.mlp_mult}: the reference GPT takes an integer MLP multiplier")
    return dict(vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                num_kv_heads=m.num_kv_heads, mlp_mult=int(m.mlp_mult), tie_embeddings=m.tie_embeddings,
                tied_embed_init_std=m.tied_embed_init_std, logit_softcap=m.logit_softcap,
                rope_base=m.rope_base, qk_gain_init=m.qk_gain_init)


# ---------------------------------------------------------------------------------------------
# Writing the reference's formats (run.py export)

# Model fields the reference GPT has no counterpart for: any non-default value is an architecture
# train_gpt.py cannot load (its own constructor arguments are reference_gpt_kwargs').
_RUNTIME_ONLY = {"attention_impl", "scan_layers", "remat", "compute_dtype", "embed_dtype"}


def reference_incompatible(m) -> list[str]:
    """The model fields (with values) that keep a run from being a reference-architecture GPT."""
    import dataclasses

    args = set(reference_gpt_kwargs(m)) if float(m.mlp_mult) == int(m.mlp_mult) else set()
    bad = [] if args else [f"mlp_mult={m.mlp_mult} (the reference takes an integer)"]
    default = type(m)()
    for f in dataclasses.fields(m):
        # options: a variant's own, only ever set with a non-reference variant (named by its field)
        if f.name in args or f.name in _RUNTIME_ONLY or f.name in ("mlp_mult", "options"):
            continue
        if getattr(m, f.name) != getattr(default, f.name):
            bad.append(f"model.{f.name}={getattr(m, f.name)!r}")
    return bad


def _to_torch(a: np.ndarray):
    torch = _torch()
    if np.dtype(a.dtype) == ml_dtypes.bfloat16:
        return torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def _torch_bytes(obj) -> bytes:
    torch = _torch()
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_torch_state_dict(named: dict[str, np.ndarray], path: str | Path) -> int:
    """A reference-named state dict as train_gpt.py's `final_model.pt` (torch.save); bytes written."""
    from pgolf_jax.fsio import write_bytes

    data = _torch_bytes({k: _to_torch(v) for k, v in named.items()})
    write_bytes(path, data)
    return len(data)


def save_reference_int8_ptz(obj: dict, path: str | Path) -> int:
    """An int8_clean_per_row_v1 quant object (export.quantize_int8) as the reference's
    `final_model.int8.ptz`: torch.save, then zlib level 9; bytes written."""
    from pgolf_jax.fsio import write_bytes

    conv = {k: ({n: _to_torch(np.asarray(t)) for n, t in v.items()} if k in ("quantized", "scales", "passthrough")
                else v) for k, v in obj.items()}
    data = zlib.compress(_torch_bytes(conv), level=9)
    write_bytes(path, data)
    return len(data)
