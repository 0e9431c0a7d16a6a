"""Resuming a pass at block `start` from the clean residual gives the full pass's output, for every family."""

import pytest
import torch

from mi_massive._hooks import capture
from mi_massive.engine import resumed
from mi_massive.arch import hook
from mi_massive.testing import TINY_CONFIGS, tiny_model

TOKENS = torch.tensor([[1, 5, 7, 9, 3, 4]])


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_resumed_pass_equals_the_full_pass(family):
    model = tiny_model(family)
    n = model.cfg.n_layers
    names = [hook.resid_post(l) for l in range(n)] + [hook.mlp_post(l) for l in range(n)]
    logits, clean = capture(model, TOKENS, names, return_type="logits")
    for start in (1, 2, n):
        fired = []
        with resumed(model, start, clean[hook.resid_post(start - 1)]), model.hooks(fwd_hooks=[
                (hook.mlp_post(l), lambda x, hook, l=l: fired.append(l)) for l in range(n)]):
            out = model(TOKENS.expand(3, -1))  # the batch-1 residual is repeated to 3 rows
        assert fired == list(range(start, n))  # the skipped blocks computed nothing
        torch.testing.assert_close(out, logits.expand(3, -1, -1), atol=1e-4, rtol=1e-4)  # batch-3 matmuls round differently
    for b in model.blocks:  # nothing left behind, on the bridge's block or the HF layer it wraps
        assert "forward" not in b.__dict__ and "forward" not in b.original_component.__dict__


def test_exception_and_bad_residual_restore_the_blocks(tiny_llama):
    resid = torch.zeros(1, TOKENS.shape[1], tiny_llama.cfg.d_model)
    with pytest.raises(RuntimeError, match="boom"), resumed(tiny_llama, 2, resid):
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="resumed residual has shape"), resumed(tiny_llama, 2, resid[:, :3]):
        tiny_llama(TOKENS)
    with pytest.raises(ValueError, match="start must be in"):
        with resumed(tiny_llama, tiny_llama.cfg.n_layers + 1, resid):
            pass
    assert all("forward" not in b.__dict__ and "forward" not in b.original_component.__dict__
               for b in tiny_llama.blocks)
    with resumed(tiny_llama, 0, resid):  # start 0: the model runs unchanged
        torch.testing.assert_close(tiny_llama(TOKENS), tiny_llama(TOKENS))


def test_hooks_of_skipped_blocks_do_not_fire_so_active_interventions_stay_exact(tiny_llama):
    """A hook that adds to block 0's output (an active intervention) is in the captured residual already; in the
    resumed pass it must not fire again, or its effect would count twice."""
    def add(x, hook):
        return x + 1.0

    n = tiny_llama.cfg.n_layers
    with tiny_llama.hooks(fwd_hooks=[(hook.resid_post(0), add)]):
        logits, clean = capture(tiny_llama, TOKENS, [hook.resid_post(1)], return_type="logits")
        with resumed(tiny_llama, 2, clean[hook.resid_post(1)]):
            out = tiny_llama(TOKENS)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
    assert n > 2
