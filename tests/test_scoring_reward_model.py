"""A process reward model served by vLLM, in process (the pooling runner) and over HTTP
(``python -m vllm.entrypoints.openai.api_server``'s ``/pooling``), as a ``reward_model`` scorer.

The model is the tiny randomly initialised ``Qwen2ForProcessRewardModel`` that
``tests/tiny_prm.py`` writes (no trained PRM can be downloaded here), so the tests check
per-step shape, step count, determinism, batching and accounting, and compare vLLM's step
probabilities with an independent forward pass of the same weights in transformers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import pytest

pytest.importorskip("vllm")
pytest.importorskip("transformers")

from scripted_steps import StepBackend, step
from servers import LlamaServer, free_port
from tiny_prm import STEP_TAG, write_tiny_prm

from archon import Pipeline
from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter, default_backend_factory
from archon.scoring import RewardModelScorer, aggregate, run_program
from archon.techniques.beam import BeamSearch
from archon.techniques.particles import ParticleSteering

pytestmark = pytest.mark.vllm

PARAMS = 1.0e5
QUESTION = "What is 3 + 4?"
STEPS = [["Add 3 and 4.", "So 3 + 4 = 7.", "The answer is \\boxed{7}."], ["It is \\boxed{8}."],
         ["First, 3.", "Then 4 more: \\boxed{7}."]]


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    return write_tiny_prm(tmp_path_factory.mktemp("tiny-prm"))


@pytest.fixture(scope="module")
def prm_router(prm_dir):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    spec = ModelSpec(backend="vllm", path=str(prm_dir), task="reward", max_model_len=512, parameters=PARAMS)
    router = ModelRouter(registry=ModelRegistry({"prm": spec}))
    yield router
    router.close()


def reference_step_probs(prm_dir, steps: list[str]) -> list[float]:
    """P(good) at each step tag from a plain transformers forward pass of the same weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    tok = AutoTokenizer.from_pretrained(prm_dir)
    messages = [{"role": "system", "content": RewardModelScorer().system}, {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": "".join(s + STEP_TAG for s in steps)}]
    ids = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False),
                     add_special_tokens=False)
    config = Qwen2Config.from_pretrained(prm_dir)
    body = Qwen2Model(config).eval()
    state = load_file(str(prm_dir / "model.safetensors"))
    body.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    head.load_state_dict({k[len("score."):]: v for k, v in state.items() if k.startswith("score.")})
    with torch.no_grad():
        hidden = body(torch.tensor([ids])).last_hidden_state[0]
        probs = torch.softmax(head(hidden), dim=-1)[:, 1]
    tag = tok.convert_tokens_to_ids(STEP_TAG)
    return [float(probs[i]) for i, t in enumerate(ids) if t == tag]


def test_vllm_prm_in_process_per_step_scores_batched_and_accounted(prm_router, prm_dir):
    prm = RewardModelScorer(model="prm", aggregation="prod")
    texts = ["\n\n".join(s) for s in STEPS]
    per_step = run_program(prm.score(QUESTION, texts, steps=STEPS), prm_router)
    assert [len(r) for r in per_step] == [len(s) for s in STEPS]  # one score per step tag
    assert all(0.0 < v < 1.0 for r in per_step for v in r)
    # one engine call for all candidates
    reward_calls = [c for c in prm_router.calls if c.kind == "reward"]
    assert len(reward_calls) == 1 and reward_calls[0].requests == len(STEPS)
    # the same probabilities as an independent forward pass of the same weights
    for steps, row in zip(STEPS, per_step, strict=True):
        assert row == pytest.approx(reference_step_probs(prm_dir, steps), abs=2e-3)
    # deterministic, and in the ledger with tokens and FLOPs
    assert run_program(prm.score(QUESTION, texts, steps=STEPS), prm_router) == per_step
    usage = prm_router.ledger.by_model()["prm"]
    assert usage.prompt_tokens > 0 and usage.flops == pytest.approx(2 * PARAMS * usage.prompt_tokens)
    # outcome scoring: the whole answer is one step
    (whole,) = run_program(prm.score(QUESTION, ["The answer is \\boxed{7}."]), prm_router)
    assert 0.0 < whole < 1.0


def _generator_and_prm_router(prm_router):
    """A scripted step generator ("gen") next to the real vLLM PRM ("prm")."""
    def respond(req, i):
        depth = req.assistant_prefix.count("\n\n")
        return step(f"Step {depth + 1} of sample {req.seed}-{i}." if depth < 2 else f"So \\boxed{{{7 + i % 2}}}.")

    gen = StepBackend("gen", respond)
    registry = prm_router.registry.merged({"gen": ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1")})
    prm_backend = prm_router.backend("prm")
    return ModelRouter(registry=registry,
                       factory=lambda name, spec: gen if name == "gen" else
                       (prm_backend if name == "prm" else default_backend_factory(name, spec)))


@pytest.mark.parametrize("make", [
    lambda prm: BeamSearch(model="gen", beam_width=2, expand=2, max_steps=3, scorer=prm),
    lambda prm: ParticleSteering(model="gen", particles=3, max_steps=3, lam=1.0, scorer=prm),
], ids=["beam", "particles"])
def test_vllm_prm_guides_step_searches(make, prm_router):
    router = _generator_and_prm_router(prm_router)
    tech = make({"type": "reward_model", "model": "prm", "aggregation": "min"})
    result = Pipeline({"n": tech}, {}, router=router).run(QUESTION)
    assert result.error is None and result.candidates
    for c in result.candidates:
        scores = c.metadata["step_scores"]
        assert len(scores) == c.metadata["steps"] and all(0.0 < s < 1.0 for s in scores)
        assert c.scores["reward"] == pytest.approx(aggregate(scores, "min"))
    reward_calls = [c for c in router.calls if c.kind == "reward"]
    assert len(reward_calls) == 3  # one batched engine call per step
    by_model = {e.model for e in router.ledger.entries}
    assert by_model == {"gen", "prm"}
    assert result.usage_by_node["n"]["prompt_tokens"] == sum(
        e.usage.prompt_tokens for e in router.ledger.entries)


class VllmServer(LlamaServer):
    """``python -m vllm.entrypoints.openai.api_server`` for a pooling model (stops on SIGINT)."""

    what = "vLLM server"

    def __init__(self, model_dir: str, name: str = "prm", step_tag_id: int | None = None) -> None:
        super().__init__(alias=name, port=free_port(), model_path=model_dir, ready_timeout_s=420.0)
        self.step_tag_id = step_tag_id

    def command(self) -> list[str]:
        # A PRM whose step tag is not Qwen's <extra_0> (id 151651) names its tag id on the server.
        pooler = ["--pooler-config", json.dumps({"step_tag_id": self.step_tag_id})] if self.step_tag_id else []
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
                "--served-model-name", self.alias, "--runner", "pooling", "--host", "127.0.0.1",
                "--port", str(self.port), "--max-model-len", "512", "--enforce-eager", "--dtype", "float32",
                *pooler]

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGINT)
            with contextlib.suppress(Exception):  # falls back to the parent's SIGTERM / SIGKILL
                self.proc.wait(timeout=grace_s)
        super().stop(grace_s=5.0)


@pytest.mark.server
def test_vllm_prm_server_pooling_endpoint_matches_in_process(prm_dir, prm_router):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer

    tag_id = AutoTokenizer.from_pretrained(prm_dir).convert_tokens_to_ids(STEP_TAG)
    with VllmServer(str(prm_dir), step_tag_id=tag_id) as server:
        router = ModelRouter(registry=ModelRegistry({"prm": ModelSpec(
            backend="openai", base_url=server.base_url, task="reward", parameters=PARAMS)}))
        try:
            prm = RewardModelScorer(model="prm")
            texts = ["\n\n".join(s) for s in STEPS]
            over_http = run_program(prm.score(QUESTION, texts, steps=STEPS), router)
            usage = router.ledger.total()
        finally:
            router.close()
    in_process = run_program(prm.score(QUESTION, texts, steps=STEPS), prm_router)
    assert [len(r) for r in over_http] == [len(s) for s in STEPS]
    for a, b in zip(over_http, in_process, strict=True):
        assert a == pytest.approx(b, abs=2e-3)
    assert usage.calls == len(STEPS) and usage.prompt_tokens > 0
