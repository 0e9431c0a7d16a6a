"""`train`: one small causal LM per attention variant, same seed, data order, schedule and steps, scanned as it learns.

    >>> from mi_massive.train import train, LabSpec
    >>> run = train(("default", "attn_bias"), LabSpec(steps=300, eval_every=50))   # doctest: +SKIP
    >>> run.to_dataframe().tail()                                                  # doctest: +SKIP

Each arm ends as a checkpoint folder that `load_model` opens (default and sink_token are plain Llama or GPT-2
checkpoints; the attention variants are `MiMassiveLabForCausalLM` or `MiMassiveLabGPT2LMHeadModel`, see `modeling`).

With ``resume=True`` every scan also writes the arm's `TrainState` (weights, optimizer, records) into its folder, and a
later call with the same spec goes on from the last one: the data order is a function of the step, so a resumed arm
sees the same batches and gives the same records as one that was never stopped (long runs on machines that are taken
back, or on wall-clock limits: see ``max_seconds``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._results import Result
from . import data as _data
from . import modeling

DATA = ("wiki-en+lee-news", "wiki-en", "lee-news", "linux-doc", "wiki-en+lee-news+linux-doc", "wikitext-103",
        *_data.SYNTHETIC)
H200_BF16_PEAK = 989.4e12  # dense bf16 FLOP/s of an H100/H200 SXM (NVIDIA datasheet, without sparsity)
MAX_EPOCHS = 5.0  # more passes over a text corpus than this and the lab warns: its H200 text runs overfit from there
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
STATE_FILE = "train_state.safetensors"  # in an arm's folder, with resume=True


@dataclass(frozen=True)
class LabSpec:
    """Model size, data and schedule shared by every arm (nanoGPT-style: one commented config)."""

    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    d_mlp: int | None = None  # None: 8/3 d_model rounded up to 64 (a SwiGLU MLP)
    tie_embeddings: bool = True  # the unembedding is the embedding (smollm2's choice); False: its own matrix
    arch: str = "llama"  # or "gpt2" (learned absolute positions, joint q/k/v: the paper's GPT-2; every arm)
    n_ctx: int = 128  # tokens per training window
    batch_size: int = 32  # windows per step
    steps: int = 1000
    lr: float = 1e-3  # peak learning rate, AdamW (0.9, 0.95), weight decay 0.1 on matrices
    warmup: int = 100  # linear warm-up steps, then cosine to lr / 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100  # scan every this many steps (and at 0 and the end)
    eval_windows: int = 16  # held-out windows per scan
    val_windows: int = 64  # held-out windows for the validation loss
    seed: int = 0
    data: str = "wiki-en+lee-news"  # or a synthetic task ("copy", "backcopy"), or "file:PATH", text of your own
    tokenizer: str = "smollm2-135m"  # an embedded model whose tokenizer is used
    vocab_size: int | None = None  # None: the tokenizer's; smaller only for the synthetic tasks (ids < 515)
    threshold: float = 100.0  # the paper's rule, never lowered here
    ratio: float = 1000.0

    def validate(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "n_ctx", "batch_size", "steps", "eval_every",
                     "eval_windows", "val_windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size < _data.SYNTHETIC_VOCAB):
            raise ValueError(f"vocab_size must be None or an int >= {_data.SYNTHETIC_VOCAB} (the synthetic tasks' ids), "
                             f"got {self.vocab_size!r}")
        if self.vocab_size is not None and self.data not in _data.SYNTHETIC:
            raise ValueError("vocab_size below the tokenizer's is only for the synthetic tasks (text uses every id)")
        modeling.check_arch(self.arch)
        if _data.own_text(self.data):
            from ..corpus import iter_text_file

            iter_text_file(_data.own_text(self.data))  # checks that the file or folder holds text files
        elif self.data not in DATA:
            raise ValueError(f"unknown data {self.data!r}: use {', '.join(map(repr, DATA))}, or "
                             f"'{_data.FILE}PATH' for text of your own")


@dataclass(frozen=True, repr=False)
class TrainState(Result):
    """Where an arm's training stood after a scan: its weights, its optimizer (None once the arm has finished), the
    records so far and the time spent; written with ``resume=True`` and read back by the next such call."""

    arm: str
    spec: LabSpec
    data: dict  # TokenData.info() of the stream it trained on
    step: int  # the scan just made: training goes on with this step
    model: dict
    optimizer: dict | None
    rows: list
    train_s: float
    warmup_s: float
    timed_steps: int  # steps inside train_s (the first ones after each start are compilation and warm-up)

    def sentence(self) -> str:
        return f"training state of the {self.arm} arm at step {self.step} of {self.spec.steps}"

    def to_dataframe(self):
        """The records so far: one row per scan and layer, as in `TrainingRun.curves`."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def check(self, arm: str, spec: LabSpec, data: dict, path: Path) -> None:
        """ValueError unless this state is of `arm` under `spec` on the same data: anything else would not go on
        with the same run."""
        if self.arm != arm:
            raise ValueError(f"{path} holds the {self.arm} arm's state, not the {arm} arm's")
        if self.spec != spec:
            diff = [f"{k}: {getattr(self.spec, k)!r} there, {getattr(spec, k)!r} here"
                    for k in (f.name for f in dataclasses.fields(spec)) if getattr(self.spec, k) != getattr(spec, k)]
            raise ValueError(f"{path} was written under another spec ({'; '.join(diff)}): resume with the same spec, "
                             "or start afresh in another folder")
        if self.data != data:
            raise ValueError(f"{path} was trained on other token data ({self.data}, here {data}): its batches would "
                             "differ; start afresh in another folder")


def load_data(spec: LabSpec, tokenizer: Any, *, held_out_only: bool = False) -> _data.TokenData:
    """The spec's token data; with `held_out_only`, for analyses of a checkpoint, a synthetic task draws only a
    short training stream (its held-out stream, from its own seed, is the same either way) and text yields only
    the held-out tokens the spec's windows read (the same tokens), with an empty training stream."""
    if spec.data in _data.SYNTHETIC:  # fresh tokens for every step (no epoch repeats), up to 64M
        n = spec.steps * spec.batch_size * (spec.n_ctx + 1)
        make = _data.copy_tokens if spec.data == "copy" else _data.backcopy_tokens
        return make(n_train=1 << 16 if held_out_only else max(1 << 20, min(1 << 26, n)), seed=spec.seed)
    corpora = (spec.data,) if _data.own_text(spec.data) else tuple(spec.data.split("+"))  # a path may hold a +
    need = max(spec.val_windows, spec.eval_windows) * (spec.n_ctx + 1) if held_out_only else None
    return _data.corpus_tokens(tokenizer, corpora, held_out_tokens=need)


def _flops_per_token(model: torch.nn.Module, spec: LabSpec) -> float:
    """Training FLOPs per token: 6 x (parameters in matrix products, the unembedding included, the input embedding
    not) + 12 x n_layers x d_model x n_ctx for the attention scores and mixing (PaLM, appendix B)."""
    n = sum(p.numel() for name, p in model.named_parameters()
            if not any(e in name for e in ("embed_tokens", "wte", "wpe")))  # lookups, not products
    n += model.config.vocab_size * model.config.hidden_size  # lm_head (tied or not, it is a matmul)
    return 6 * n + 12 * spec.n_layers * spec.d_model * spec.n_ctx


def _lr(step: int, spec: LabSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _optimizer(model: torch.nn.Module, spec: LabSpec, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def _arm_config(arm: str, spec: LabSpec, tokenizer: Any):
    return modeling.lab_config(arm, d_model=spec.d_model, n_layers=spec.n_layers, n_heads=spec.n_heads,
                               vocab_size=spec.vocab_size or len(tokenizer), d_mlp=spec.d_mlp, n_ctx=spec.n_ctx,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               tie_embeddings=spec.tie_embeddings, arch=spec.arch)


class _Scanner:
    """A bridge over an eval copy of the arm's model, refreshed from the training weights before each scan."""

    def __init__(self, config: Any, tokenizer: Any, device: torch.device):
        import warnings

        from ..models import load_model

        modeling.register()
        hf = modeling.build_model(config).to(device)
        self.params = dict(hf.named_parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.bridge = load_model(hf, tokenizer=tokenizer, device=str(device))

    @torch.no_grad()
    def refresh(self, model: torch.nn.Module) -> Any:
        for name, p in model.named_parameters():
            self.params[name].copy_(p.float())
        return self.bridge


@torch.no_grad()
def _val_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp: bool, batch: int) -> float:
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(input_ids=x[i:i + batch]).logits
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y[i:i + batch].flatten(), reduction="sum"))
    model.train(was)
    return total / y.numel()


def _batches(spec: LabSpec, token_data: _data.TokenData) -> _data.Batches:
    return _data.Batches(token_data.train, n_ctx=spec.n_ctx, batch_size=spec.batch_size, seed=spec.seed)


def warn_repeats(spec: LabSpec, token_data: _data.TokenData) -> float:
    """The passes over the training tokens that `spec.steps` make; a warning when text is repeated so often that
    the lab's curves describe memorisation (the synthetic tasks draw fresh tokens and never warn)."""
    epochs = _batches(spec, token_data).epochs(spec.steps)  # as the arms will record it
    if spec.data not in _data.SYNTHETIC and epochs > MAX_EPOCHS:
        import warnings

        warnings.warn(f"{spec.steps} steps of {spec.batch_size} x {spec.n_ctx} tokens pass over the "
                      f"{len(token_data.train):,} training tokens of {spec.data!r} {epochs:.0f} times: past about "
                      f"{MAX_EPOCHS:g} epochs the validation loss rises as the model memorises them. Use more text "
                      "(data 'wikitext-103', online, or 'file:PATH', your own) or fewer steps", stacklevel=3)
    return epochs


def train_arm(arm: str, spec: LabSpec, *, token_data: _data.TokenData, tokenizer: Any, out_dir: str | Path | None,
              device: str | torch.device | None = None, compile: bool | str | None = None, amp: bool | None = None,
              progress: bool | None = None, max_seconds: float | None = None, resume: bool = False) -> dict:
    """Train one arm; returns its records (eval rows, throughput, checkpoint path).

    `max_seconds`: a wall-clock budget; when it is spent the arm stops at its next scan (recorded as
    ``stopped_at``), so that a shared GPU's budget ends with records and a checkpoint rather than a kill.
    `resume`: write a `TrainState` into ``out_dir/arm`` at every scan, and start from the one found there.
    """
    from tqdm.auto import tqdm

    from .probe import probe

    if resume and out_dir is None:
        raise ValueError("resume=True needs an out_dir to keep the training state in")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    amp = cuda if amp is None else amp  # bf16 autocast pays on the GPU; on the CPU it is slower
    compile = cuda if compile is None else compile
    sink_id = tokenizer.bos_token_id if arm == "sink_token" else None
    config = _arm_config(arm, spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = modeling.build_model(config).to(device)
    model.train()
    opt = _optimizer(model, spec, device)
    state_path = Path(out_dir) / arm / STATE_FILE if resume else None
    start, rows, train_time, first_steps_time, timed_steps = 0, [], 0.0, None, 0
    if state_path is not None and state_path.exists():
        state = TrainState.load(state_path)
        state.check(arm, spec, token_data.info(), state_path)
        model.load_state_dict(state.model)
        if state.optimizer is not None:
            opt.load_state_dict(state.optimizer)
        start, rows, train_time, first_steps_time = state.step, list(state.rows), state.train_s, state.warmup_s
        timed_steps = state.timed_steps
    step_fn = (torch.compile(model, mode=compile if isinstance(compile, str) else None) if compile
               else model)  # a mode string: torch.compile's (reduce-overhead replays CUDA graphs)
    batches = _batches(spec, token_data)
    vx, vy = _data.held_out(token_data.val, n=spec.val_windows, n_ctx=spec.n_ctx, sink_id=sink_id)
    sx, _ = _data.held_out(token_data.val, n=spec.eval_windows, n_ctx=spec.n_ctx, sink_id=sink_id)
    vx, vy = vx.to(device), vy.to(device)
    scanner = _Scanner(config, tokenizer, device)
    flops = _flops_per_token(model, spec)

    train_losses: list[float] = []
    pending: list[torch.Tensor] = []  # losses still on the device: read once per scan, not once per step
    eval_steps = sorted({0, spec.steps, *range(spec.eval_every, spec.steps, spec.eval_every)})
    bar = tqdm(total=spec.steps, initial=start, desc=f"train {arm}",
               disable=not (progress if progress is not None else not cuda))
    started, stopped_at = time.perf_counter(), None
    segment: float | None = None  # start of the timed stretch of steps since the last scan

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def settle() -> None:  # end a timed stretch: wait for the device, add its time, read its losses
        nonlocal train_time, segment
        sync()
        if segment is not None:
            train_time += time.perf_counter() - segment
            segment = None
        if pending:
            train_losses.extend(torch.stack(pending).tolist())
            pending.clear()

    def evaluate(step: int) -> None:
        loss = _val_loss(model, vx, vy, amp=amp, batch=max(1, spec.batch_size))
        bridge = scanner.refresh(model)
        recent = train_losses[-spec.eval_every:]
        for r in probe(bridge, sx, threshold=spec.threshold, ratio=spec.ratio, batch_size=min(16, len(sx))):
            rows.append({"arm": arm, "step": step, "tokens": step * spec.batch_size * spec.n_ctx, "val_loss": loss,
                         "train_loss": sum(recent) / len(recent) if recent else float("nan"), **r})

    def save_state(step: int) -> None:  # whole or not at all: a kill while writing leaves the last state in place
        tmp = state_path.with_name(f"{state_path.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        TrainState(arm, spec, token_data.info(), step, model.state_dict(),
                   opt.state_dict() if step < spec.steps else None, rows, train_time, first_steps_time or 0.0,
                   timed_steps).save(tmp)
        os.replace(tmp, state_path)

    for step in range(start, spec.steps + 1):
        if step in eval_steps and (step > start or not rows):  # a resumed arm has its scan at `start` already
            settle()
            evaluate(step)
            if cuda and bar.disable:  # no bar on CUDA: one line per scan for the log (silent when asked on the CPU)
                print(f"[{arm}] step {step}: val loss {rows[-1]['val_loss']:.4f}, max top-1/median "
                      f"{max(r['ratio_pos0'] for r in rows[-spec.n_layers:]):.1f} at pos 0, "
                      f"{sum(r['n_hits'] for r in rows[-spec.n_layers:])} hits", flush=True)
            if state_path is not None:
                save_state(step)
            if max_seconds is not None and step < spec.steps and time.perf_counter() - started > max_seconds:
                stopped_at = step
                break
        if step == spec.steps:
            break
        warm = step < start + 10  # compilation and warm-up, timed step by step and kept out of the throughput
        if warm:
            sync()
            t0 = time.perf_counter()
        else:
            timed_steps += 1
            if segment is None:
                sync()
                segment = time.perf_counter()
        x, y = _data.inputs_targets(batches.windows(step), sink_id)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = _lr(step, spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = step_fn(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        pending.append(loss.detach())  # no host sync per step: a launch-bound model keeps the GPU fed
        if warm:
            sync()
            first_steps_time = (first_steps_time or 0.0) + time.perf_counter() - t0
        bar.update(1)
        if not bar.disable:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()

    done = spec.steps if stopped_at is None else stopped_at
    timed_tokens = timed_steps * spec.batch_size * spec.n_ctx
    tok_s = timed_tokens / train_time if train_time else float("nan")
    record = {
        "arm": arm, "rows": rows, "n_params": sum(p.numel() for p in model.parameters()),
        "flops_per_token": flops, "tokens_per_s": tok_s,
        "mfu": tok_s * flops / H200_BF16_PEAK if cuda else float("nan"),
        "warmup_s": first_steps_time or 0.0, "train_s": train_time, "epochs": batches.epochs(done),
        "stopped_at": -1 if stopped_at is None else stopped_at, "resumed_at": start,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "amp": amp, "compile": compile,
        "checkpoint": None,
    }
    if out_dir is not None:
        record["checkpoint"] = str(save_checkpoint(model, tokenizer, Path(out_dir) / arm, arm=arm, spec=spec))
    return record


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, path: Path, *, arm: str, spec: LabSpec) -> Path:
    """A folder `load_model` opens: HF weights (float32) and config, the tokenizer, and lab.json (how it was made)."""
    path.mkdir(parents=True, exist_ok=True)
    model = model.float()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    sink = tokenizer.bos_token if arm == "sink_token" else None
    (path / "lab.json").write_text(json.dumps({"arm": arm, "sink_token": sink, "spec": dataclasses.asdict(spec)},
                                              indent=1))
    return path


def train(arms: tuple[str, ...] | list[str] = ("default", "sink_token", "attn_bias", "softmax1", "gated"),
          spec: LabSpec | None = None, *, out_dir: str | Path | None = None, device: str | None = None,
          compile: bool | str | None = None, amp: bool | None = None, progress: bool | None = None,
          max_seconds: float | None = None, resume: bool = False):
    """Train every arm in turn on the same data order and schedule; returns a `TrainingRun`.

    `arms` from `modeling.VARIANTS`; `out_dir` receives one checkpoint folder per arm (None: no checkpoints);
    `compile` and `amp` (bf16 autocast) default to on for CUDA and off on the CPU, where a progress bar shows;
    `compile` may also name a torch.compile mode (`COMPILE_MODES`). `max_seconds` is each arm's wall-clock budget
    (it stops at its next scan); with `resume`, every scan writes the arm's `TrainState` into its folder under
    `out_dir`, and the next call with the same spec goes on from there (an arm that had finished is not retrained).
    """
    from .result import TrainingRun

    spec = spec or LabSpec()
    spec.validate()
    arms = tuple(arms)
    if not arms:
        raise ValueError("give at least one arm")
    bad = [a for a in arms if a not in modeling.VARIANTS]
    if bad:
        raise ValueError(f"unknown arm {bad[0]!r}: known arms are {', '.join(modeling.VARIANTS)}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms repeat: {arms}")
    if isinstance(compile, str) and compile not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {compile!r}: use one of {', '.join(COMPILE_MODES)}")
    tokenizer = _data.tokenizer_of(spec.tokenizer)
    token_data = load_data(spec, tokenizer)
    warn_repeats(spec, token_data)
    records = [train_arm(a, spec, token_data=token_data, tokenizer=tokenizer, out_dir=out_dir, device=device,
                         compile=compile, amp=amp, progress=progress, max_seconds=max_seconds, resume=resume)
               for a in arms]
    return TrainingRun.from_records(records, spec=spec, data=token_data.info())
