"""`_graphs`: when a scan's passes are captured and replayed (the policy, on the CPU with a stand-in graph), and
on CUDA that a scan with graphs finds exactly what one without finds."""

import time

import pytest
import torch

from mi_massive.engine import _graphs


class FakeGraph:
    """Stands in for `_graphs.Graph` (no CUDA here): replays call fn again; each replay takes `replay_s`."""

    made: list["FakeGraph"] = []
    replay_s = 0.001
    fail: Exception | None = None

    def __init__(self, fn, x, device):
        if FakeGraph.fail is not None:
            raise FakeGraph.fail
        self.fn, self.n = fn, 0
        FakeGraph.made.append(self)
        self.outputs = fn(x)  # what a capture records: fn with the first eager pass's inputs

    def __call__(self, x):
        self.n += 1
        return self.fn(x)  # (a real replay writes into self.outputs)

    def times(self):
        return [FakeGraph.replay_s] * self.n


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(_graphs.Passes, "graph_class", FakeGraph)
    FakeGraph.made, FakeGraph.replay_s, FakeGraph.fail = [], 0.001, None
    return FakeGraph


def scan(timings, n_batches, *, key="k", eager_s=0.01, kept=None):
    """n_batches passes of one key; returns how many ran eagerly. The pass's output is its input doubled."""
    eager = []

    def fn(x, inputs):
        eager.append(1)
        if inputs is not None:  # the first eager pass records what the capture is handed
            inputs["mask"] = "recorded"
        time.sleep(eager_s)
        return [x * 2]

    passes = _graphs.Passes(torch.device("cpu"), {key: n_batches}, timings, {} if kept is None else kept)
    for i in range(n_batches):
        x = torch.full((2,), float(i))
        assert torch.equal(passes.run(key, x, fn)[0], x * 2)
    passes.close()
    return len(eager) - sum(g.n + 1 for g in FakeGraph.made)  # calls of fn outside captures and replays


def test_untimed_shape_runs_eagerly_then_is_captured_to_learn(fake):
    timings = {}
    assert scan(timings, 4) == _graphs.EAGER_FIRST  # batches 1-2 eager, 3 captured and replayed, 4 replayed
    assert len(fake.made) == 1 and fake.made[0].n == 2
    t = timings["k"]
    assert t.eager_runs == 2 and t.eager >= 0.01 and t.replay == 0.001 and t.capture is not None


def test_timed_shape_is_captured_after_one_eager_batch_where_replays_pay(fake):
    timings = {}
    scan(timings, 4)
    fake.made = []
    assert scan(timings, 4) == 1 and len(fake.made) == 1 and fake.made[0].n == 3  # the eager batch records masks


def test_kept_inputs_let_a_timed_shape_be_captured_at_its_first_batch(fake):
    timings, kept = {}, {}
    scan(timings, 4, kept=kept)
    assert kept == {"k": {"mask": "recorded"}}
    fake.made = []
    assert scan(timings, 4, kept=kept) == 0 and fake.made[0].n == 4


def test_recorded_inputs_are_kept_for_captured_shapes_within_a_budget(fake, monkeypatch):
    monkeypatch.setattr(_graphs, "KEEP_BYTES", 100)
    timings, kept = {}, {}
    mask = {"k": torch.zeros(26)[:5], "j": torch.zeros(20), "i": torch.zeros(6)}  # storages of 104, 80, 24 bytes

    def fn(x, inputs):
        if inputs is not None:
            inputs.update(a=mask[key], b=mask[key][None])  # one storage, twice
        return [x]

    for key in ("k", "j", "i"):
        for _ in range(2):  # the first scan of a key learns, the second captures
            passes = _graphs.Passes(torch.device("cpu"), {key: 4, "once": 1}, timings, kept)
            for k in (key,) * 4 + ("once",):
                passes.run(k, torch.zeros(1), fn)
            passes.close()
            timings[key].eager = 1.0  # make replays pay
    assert sorted(kept) == ["j"]  # k: over the budget alone; i: over it beside j; once: never captured
    assert "once" not in passes.inputs  # a lone batch records nothing


def test_later_eager_passes_are_given_the_recorded_inputs(fake):
    """So transformers does not build the masks again: that makes the host wait for the device twice a pass."""
    given = []

    def fn(x, inputs):
        given.append(None if inputs is None else dict(inputs))
        if inputs is not None and not inputs:
            inputs["mask"] = "recorded"
        return [x]

    passes = _graphs.Passes(torch.device("cpu"), {"k": 3, "once": 1}, {}, {})
    for key in ("k", "k", "k", "once"):  # too few batches of k to capture: every one runs eagerly
        passes.run(key, torch.zeros(1), fn)
    assert not fake.made
    assert given == [{}, {"mask": "recorded"}, {"mask": "recorded"}, None]  # once: nothing recorded, nothing given


def test_few_batches_are_not_captured(fake):
    timings = {}
    assert scan(timings, 2) == 2 and not fake.made  # nothing left to capture after the 2 eager batches
    assert scan(timings, 1) == 1 and not fake.made  # one batch never pays for a capture


def test_failed_capture_runs_eagerly_and_is_not_tried_again(fake):
    timings = {}
    fake.fail = RuntimeError("operation not permitted when stream is capturing")
    assert scan(timings, 4) == 4
    assert "not permitted" in timings["k"].failed
    fake.fail = None
    assert scan(timings, 4) == 4 and not fake.made


def test_policy_arithmetic():
    t = _graphs.Timing(eager=0.025, eager_runs=2, replay=0.008, capture=0.04)
    assert t.capture_pays(4) and t.capture_pays(3) and not t.capture_pays(2)  # 0.017 x left > 0.04


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scan_with_graphs_finds_what_eager_finds(dtype, monkeypatch):
    from mi_massive import detect, engine
    from mi_massive.engine import _bare
    from mi_massive.testing import tiny_model

    model = tiny_model("llama", dtype=dtype)  # on CUDA: TransformerLens's default device where there is one
    tokens = torch.randint(3, model.cfg.d_vocab, (22, 16), generator=torch.Generator().manual_seed(0))  # 5 batches
    # of 4 and one of 2
    tokens[:, 0] = model.tokenizer.bos_token_id
    runs = []
    for graphs in (False, True, True, True):  # the 2nd scan learns the replay's time, the 3rd and 4th use it
        with engine.configure(cuda_graphs=graphs):
            found, profile = detect.scan(model, tokens, batch_size=4, progress=False)
        runs.append((found.to_dataframe(), profile.to_dataframe()))
    for found, profile in runs[1:]:
        assert found.equals(runs[0][0]) and profile.equals(runs[0][1])
    assert len(runs[0][0]) > 0  # the tiny model's planted massive activation
    timing = next(iter(_bare.kept_trunk(model).timings.values()))
    assert timing.failed is None and timing.replay is not None


def test_a_scan_runs_the_engine_to_its_end(monkeypatch):
    """The engine keeps what its CUDA graphs' replays cost once its last batch is read; a scan that stopped
    reading at the last batch (zip with the batches first) never let it, and captured again in every scan."""
    from mi_massive import detect, engine
    from mi_massive.testing import tiny_model

    finished, real = [], engine.block_stats

    def spy(*args, **kwargs):
        yield from real(*args, **kwargs)
        finished.append(True)

    monkeypatch.setattr(engine, "block_stats", spy)
    detect.scan(tiny_model("llama"), ["hello world", "abc", "xyz"], batch_size=2, progress=False)
    assert finished == [True]
