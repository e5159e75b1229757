"""Scorers: parsing, the exact calls they make, aggregation, the registry, and the
reward-model client against a real HTTP server on loopback (vLLM's response shapes)."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from scripted import ScriptedBackend, scripted_router

from archon import Pipeline
from archon.backends.types import GenerationResult, Sample, ScoreResult, TokenLogprob
from archon.errors import BackendError, ConfigError
from archon.scoring import (
    GenerativeRewardScorer,
    LLMJudgeScorer,
    LogprobScorer,
    PairwiseJudgeScorer,
    RewardModelScorer,
    ScoreContext,
    Scorer,
    make_scorer,
    order_by_score,
    run_program,
    scorer_spec,
)
from archon.scoring.parsing import expected_digit_score, parse_preference, parse_score, parse_score_list
from archon.techniques import Generate, Score


def user_text(req) -> str:
    return req.messages[-1].content


def drive_skipping(program):
    """Answer every round with skipped calls, as the engine does when the budget is spent."""
    try:
        requests = program.send(None)
        while True:
            requests = program.send([GenerationResult([]) if hasattr(r, "n") else ScoreResult([], [])
                                     for r in requests])
    except StopIteration as stop:
        return stop.value


# -- parsing --------------------------------------------------------------------------------

def test_parse_score_forms():
    assert parse_score("Good answer.\nScore: 7")[0] == 7
    assert parse_score("**Rating:** 8/10")[0] == 8
    assert parse_score("I'd say [[6]]")[0] == 6
    assert parse_score("this is a 9/10 response")[0] == 9
    assert parse_score("3 out of 10")[0] == 3
    assert parse_score("  5  ")[0] == 5
    assert parse_score("Score: 4 ... on reflection, Score: 6")[0] == 6  # last one wins
    assert parse_score("Score: 42") is None  # out of range
    assert parse_score("no number here") is None
    text = "ok. Score: 7"
    assert text[parse_score(text)[1]] == "7"


def test_parse_preference_and_score_list():
    assert parse_preference("A is close but... Winner: B") == "B"
    assert parse_preference("Winner: **A**") == "A"
    assert parse_preference("[[C]]") == "tie"
    assert parse_preference("Response A is better than B.") == "A"
    assert parse_preference("Winner: tie") == "tie"
    assert parse_preference("hmm") is None
    assert parse_score_list("so \\boxed{7, 3}", 2) == [7, 3]
    assert parse_score_list("\\boxed{7, 3} then \\boxed{1}", 2) == [7, 3]  # incomplete last list ignored
    assert parse_score_list("Scores: [8, 2, 5]", 3) == [8, 2, 5]
    assert parse_score_list("Response 1: 4\nResponse 2: 9", 2) == [4, 9]
    assert parse_score_list("\\boxed{7, 30}", 2) is None
    assert parse_score_list("nothing", 1) is None


def test_order_by_score_puts_nan_last_and_keeps_ties_stable():
    assert order_by_score([0.2, float("nan"), 0.9, 0.2]) == [2, 0, 3, 1]


# -- LLM judges -----------------------------------------------------------------------------

def test_pointwise_judge_one_batch_exact_calls_and_scores():
    def respond(req, i):
        text = user_text(req)
        return "Fine. Score: 9" if "Paris" in text else ("Score: **3**" if "Lyon" in text else "no idea")

    router, backends = scripted_router(respond)
    scorer = make_scorer({"type": "judge", "scale_max": 10})
    notes: list[str] = []
    values = run_program(scorer.score("Capital of France?", ["Paris", "Lyon", "Nice"],
                                      ScoreContext(model="embedded", seed=3, note=notes.append)), router)
    assert values[:2] == [9.0, 3.0] and math.isnan(values[2])
    (batch,) = backends["embedded"].batches
    assert len(batch) == 3
    assert all(r.temperature == 0.0 and r.seed == 3 and r.n == 1 for r in batch)
    assert all("Question:\nCapital of France?" in user_text(r) for r in batch)
    assert sorted(user_text(r).rsplit("\n", 1)[1] for r in batch) == ["Lyon", "Nice", "Paris"]
    assert any("no score" in n and "candidate 3" in n for n in notes)


def test_pointwise_judge_samples_are_averaged():
    router, backends = scripted_router(lambda req, i: f"Score: {4 + 2 * i}")
    values = run_program(LLMJudgeScorer(samples=3).score("q", ["a"]), router)
    assert values == [6.0]  # (4 + 6 + 8) / 3
    assert backends["embedded"].batches[0][0].n == 3


class LogprobBackend(ScriptedBackend):
    """Scripted replies with token log-probabilities: the score token '7' with 8 close behind."""

    def generate(self, requests):
        self.batches.append(list(requests))
        out = []
        for r in requests:
            toks = [TokenLogprob("Score", -0.1), TokenLogprob(":", -0.1), TokenLogprob(" ", -0.1),
                    TokenLogprob("7", math.log(0.6), {"7": math.log(0.6), "8": math.log(0.3), "x": math.log(0.1)})]
            assert r.logprobs and r.top_logprobs == 5
            out.append(GenerationResult([Sample("Score: 7", logprobs=toks)]))
        return out


def test_pointwise_judge_reads_the_digit_distribution():
    router, backends = scripted_router()
    backends["embedded"].__class__ = LogprobBackend
    values = run_program(LLMJudgeScorer(use_logprobs=True, top_logprobs=5).score("q", ["a"]), router)
    assert values[0] == pytest.approx((7 * 0.6 + 8 * 0.3) / 0.9)
    # a score spread over several tokens falls back to the parsed value
    two = Sample("Score: 10", logprobs=[TokenLogprob("Score: ", -0.1), TokenLogprob("1", -0.1, {"1": -0.1}),
                                         TokenLogprob("0", -0.1)])
    assert expected_digit_score(two, 1, 10) is None


def test_pairwise_round_robin_both_orders_and_vs_first():
    def respond(req, i):
        text = user_text(req)
        a = text.split("Response A:\n", 1)[1].split("\n\nResponse B:", 1)[0]
        b = text.split("Response B:\n", 1)[1]
        rank = {"best": 3, "mid": 2, "worst": 1}
        ra, rb = rank[a.strip()], rank[b.strip()]
        return "Winner: A" if ra > rb else ("Winner: B" if rb > ra else "Winner: tie")

    router, backends = scripted_router(respond)
    values = run_program(PairwiseJudgeScorer().score("q", ["mid", "best", "worst"]), router)
    assert values == [0.5, 1.0, 0.0]
    (batch,) = backends["embedded"].batches
    assert len(batch) == 6  # 3 pairs x 2 orders, one batch
    router, backends = scripted_router(respond)
    values = run_program(PairwiseJudgeScorer(mode="vs_first", both_orders=False).score("q", ["mid", "best", "worst"]),
                         router)
    assert values == [0.5, 1.0, 0.0]
    assert len(backends["embedded"].batches[0]) == 2
    assert PairwiseJudgeScorer().pairs(2) == [(0, 1), (1, 0)]


def test_grm_samples_k_judgments_and_votes():
    replies = ["Principles: ... Critique ... \\boxed{8, 3}", "... \\boxed{6, 5}", "I refuse"]
    router, backends = scripted_router(lambda req, i: replies[i % 3])
    notes: list[str] = []
    scorer = make_scorer({"type": "grm", "samples": 3})
    values = run_program(scorer.score("q", ["a", "b"], ScoreContext(note=notes.append)), router)
    assert values == [14.0, 8.0]  # summed over the two valid judgments
    (batch,) = backends["embedded"].batches
    assert len(batch) == 1 and batch[0].n == 3 and batch[0].temperature == 0.7
    assert "[Response 2]" in user_text(batch[0]) and "principles" in user_text(batch[0]).lower()
    assert any("1 of 3" in n for n in notes)
    mean = run_program(GenerativeRewardScorer(samples=3, aggregate="mean").score("q", ["a", "b"]), router)
    assert mean == [7.0, 4.0]
    majority = run_program(GenerativeRewardScorer(samples=3, aggregate="majority").score("q", ["a", "b"]), router)
    assert majority == [1.0, 0.0]


def test_grm_groups_and_fixed_principles():
    router, backends = scripted_router(lambda req, i: "\\boxed{5, 6}" if "[Response 2]" in user_text(req)
                                       else "\\boxed{9}")
    scorer = GenerativeRewardScorer(samples=2, group_size=2, principles=["Be exact."])
    values = run_program(scorer.score("q", ["a", "b", "c"]), router)
    assert values == [10.0, 12.0, 18.0]
    (batch,) = backends["embedded"].batches
    assert len(batch) == 2 and "Be exact." in user_text(batch[0])


def test_logprob_scorer_one_score_request_for_all_candidates():
    router, backends = scripted_router()
    values = run_program(LogprobScorer(model="embedded").score("q", ["a", "b"]), router)
    assert values == [-1.0, -2.0]  # the scripted backend's per-token values
    (batch,) = backends["embedded"].score_batches
    assert len(batch) == 1 and batch[0].continuations == ("a", "b")
    assert run_program(LogprobScorer(reduce="sum").score("q", ["a", "b"]), router) == [-1.0, -2.0]


def test_skipped_calls_give_nan_and_a_note():
    for scorer in (LLMJudgeScorer(), PairwiseJudgeScorer(), GenerativeRewardScorer(), LogprobScorer()):
        notes: list[str] = []
        values = drive_skipping(scorer.score("q", ["a", "b"], ScoreContext(note=notes.append)))
        assert len(values) == 2 and all(math.isnan(v) for v in values), scorer.type
        assert notes and any("skipped" in n for n in notes), scorer.type


# -- registry and YAML ----------------------------------------------------------------------

class ConstantScorer(Scorer):
    key: ClassVar[str] = "const"
    type: str = "const"
    value: float = 1.0

    def models(self, default):
        return []

    def score_outcomes(self, question, candidates, ctx):
        return [self.value] * len(candidates)
        yield []


def test_make_scorer_types_aliases_and_errors():
    assert isinstance(make_scorer({"type": "judge", "model": "embedded"}), LLMJudgeScorer)
    assert isinstance(make_scorer("pointwise"), LLMJudgeScorer)
    assert isinstance(make_scorer({}), LLMJudgeScorer)
    assert isinstance(make_scorer({"type": "deepseek_grm"}), GenerativeRewardScorer)
    assert isinstance(make_scorer({"type": "prm", "model": "qwen-prm"}), RewardModelScorer)
    custom = make_scorer({"type": "test_scorers:ConstantScorer", "value": 2.5})
    assert isinstance(custom, Scorer) and run_program(custom.score("q", ["a", "b"]), None) == [2.5, 2.5]
    judge = LLMJudgeScorer(samples=2)
    assert make_scorer(judge) is judge
    assert scorer_spec(judge) == {"type": "judge", "samples": 2}
    with pytest.raises(ValueError, match=r"unknown scorer 'juge'.*did you mean `judge`"):
        make_scorer({"type": "juge"})
    with pytest.raises(ValueError, match="scale_maxx"):
        make_scorer({"type": "judge", "scale_maxx": 5})


def test_scorer_in_yaml_validates_and_errors_point_at_the_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("nodes:\n  - {technique: generate, samples: 2}\n"
                    "  - {technique: best_of_n, scorer: {type: pairwise, mode: vs_first}}\n")
    pipe = Pipeline.from_yaml(good, cache=False)
    node = pipe.graph.nodes["best_of_n_1"]
    assert isinstance(node.params.scorer, PairwiseJudgeScorer) and node.params.scorer.mode == "vs_first"
    assert node.describe()["scorer"] == {"type": "pairwise", "mode": "vs_first"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - {technique: generate}\n  - {technique: score, scorer: {type: jugde}}\n")
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.scorer.*unknown scorer 'jugde'"):
        Pipeline.from_yaml(bad, cache=False)
    bad.write_text("nodes:\n  - {technique: generate}\n  - {technique: score, scorer: {type: judge, model: gpt-9}}\n")
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'"):
        Pipeline.from_yaml(bad, cache=False)


def test_scorer_requests_are_batched_across_queries_by_the_engine():
    router, backends = scripted_router(lambda req, i: "Score: 5" if "Score" in user_text(req) else f"ans {i}")
    pipe = Pipeline({"g": Generate(samples=2), "s": Score(scorer={"type": "judge"})}, {"s": ["g"]}, router=router)
    results = pipe.run_batch(["q1", "q2", "q3"])
    assert all(c.scores["judge"] == 5.0 for r in results for c in r.candidates)
    assert [len(b) for b in backends["embedded"].batches] == [3, 6]  # generate, then 3 queries x 2 candidates


# -- reward model over HTTP (vLLM's /score, /classify, /pooling) -----------------------------

class _VLLMStub(BaseHTTPRequestHandler):
    """Implements the response shapes of vLLM's pooling endpoints; rewards = len(text) / 100."""

    seen: ClassVar[list[tuple[str, dict]]] = []
    fail_first: ClassVar[list[int]] = [0]

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, body))
        if self.fail_first[0] > 0:
            self.fail_first[0] -= 1
            return self._send(503, {"error": "warming up"})
        if self.path == "/score":
            docs = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
            data = [{"index": i, "object": "score", "score": len(d) / 100} for i, d in enumerate(docs)]
        elif self.path == "/classify":
            data = [{"index": i, "label": "LABEL_1", "probs": [1 - len(t) / 100, len(t) / 100], "num_classes": 2}
                    for i, t in enumerate(body["input"])]
        elif self.path == "/pooling":  # a PRM: [p_bad, p_good] per step
            texts = [body["input"]] if "input" in body else ["".join(m["content"] for m in body["messages"])]
            data = [{"index": i, "object": "pooling",  # one row per step tag; the last one = len / 100
                     "data": [[0.1, 0.9]] * (t.count("<extra_0>") - 1) + [[1 - len(t) / 100, len(t) / 100]]}
                    for i, t in enumerate(texts)]
        elif self.path == "/custom":  # a non-vLLM reward server: {"out": {"scores": [one per step]}}
            text = "".join(m["content"] for m in body["query"])
            steps = max(1, text.count("<extra_0>"))
            return self._send(200, {"out": {"scores": [0.5 + k / 10 for k in range(steps)]},
                                    "usage": {"prompt_tokens": 7}})
        else:
            return self._send(404, {"error": "not found"})
        data.reverse()  # out of order on purpose: the client must use `index`
        self._send(200, {"id": "x", "object": "list", "created": 0, "model": body.get("model"), "data": data,
                         "usage": {"prompt_tokens": 12, "total_tokens": 12, "completion_tokens": 0}})

    def _send(self, status, payload):
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def vllm_stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VLLMStub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    _VLLMStub.seen.clear()
    _VLLMStub.fail_first[0] = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _pooling_router(url: str, cache=None):
    from archon.backends.cache import CallCache
    from archon.backends.registry import ModelRegistry, ModelSpec
    from archon.backends.router import ModelRouter

    return ModelRouter(registry=ModelRegistry({"rm": ModelSpec(backend="openai", base_url=url + "/v1", task="reward",
                                                                max_retries=1, parameters=1e9)}),
                       cache=CallCache(cache) if cache else None)


def test_reward_model_through_the_router_reads_pooling_rows(vllm_stub, tmp_path):
    router = _pooling_router(vllm_stub, tmp_path / "calls.sqlite")
    prm = RewardModelScorer(model="rm", format="raw", aggregation="min")
    per_step = run_program(prm.score("q", ["x" * 50], steps=[["a", "b"]]), router)
    assert per_step == [[0.9, pytest.approx(len("q\n\na<extra_0>b<extra_0>") / 100)]]
    path, body = _VLLMStub.seen[-1]
    assert path == "/pooling" and body == {"model": "rm", "input": "q\n\na<extra_0>b<extra_0>"}
    assert prm.reduce_steps(per_step[0]) == pytest.approx(min(per_step[0]))
    # chat format: the server applies the model's template to system/user/assistant messages
    chat = RewardModelScorer(model="rm")
    run_program(chat.score("q", ["s1\n\ns2"], steps=[["s1", "s2"]]), router)
    body = _VLLMStub.seen[-1][1]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant"]
    assert body["messages"][2]["content"] == "s1<extra_0>s2<extra_0>" and body["add_generation_prompt"] is False
    # accounted in the ledger with FLOPs, and cached: the same request again costs nothing
    assert router.ledger.total().prompt_tokens == 24 and router.ledger.total().flops == 2 * 1e9 * 24
    run_program(chat.score("q", ["s1\n\ns2"], steps=[["s1", "s2"]]), router)
    assert len(_VLLMStub.seen) == 2
    assert router.ledger.total().cache_hits == 1 and router.ledger.total().prompt_tokens == 24
    router.close()


def test_reward_model_retries_5xx_and_fails_loudly(vllm_stub):
    _VLLMStub.fail_first[0] = 1
    router = _pooling_router(vllm_stub)
    assert run_program(RewardModelScorer(model="rm", format="raw").score("q", ["abc"]), router) == [
        pytest.approx(len("q\n\nabc<extra_0>") / 100)]
    assert len(_VLLMStub.seen) == 2
    router.close()
    router = _pooling_router(vllm_stub + "/nope")
    with pytest.raises(BackendError, match="404"):
        run_program(RewardModelScorer(model="rm").score("q", ["a"]), router)
    router.close()


def test_reward_model_scorer_in_a_pipeline_is_accounted_per_node(vllm_stub):
    from archon.backends.registry import ModelSpec
    from archon.backends.router import default_backend_factory

    router, backends = scripted_router(lambda req, i: "x" * (10 * (i + 1)))
    router.registry = router.registry.merged({"rm": ModelSpec(backend="openai", base_url=vllm_stub + "/v1",
                                                              task="reward")})
    router.factory = lambda name, spec: backends.get(name) or default_backend_factory(name, spec)
    pipe = Pipeline({"g": Generate(samples=3),
                     "best": Score(scorer={"type": "reward_model", "model": "rm", "format": "raw"})},
                    {"best": ["g"]}, router=router)
    result = pipe.run("q")
    assert [c.scores["reward"] for c in result.candidates] == [pytest.approx(len(f"q\n\n{'x' * k}<extra_0>") / 100)
                                                              for k in (10, 20, 30)]
    assert result.usage_by_node["best"]["prompt_tokens"] == 3 * 12 and result.usage_by_node["best"]["calls"] == 3
    assert result.usage["prompt_tokens"] == result.usage_by_node["g"]["prompt_tokens"] + 36


def test_http_reward_backend_maps_request_and_response(vllm_stub):
    from archon.backends.registry import ModelRegistry, ModelSpec
    from archon.backends.router import ModelRouter

    _VLLMStub.fail_first[0] = 1  # one 503 first: retried
    spec = ModelSpec(backend="http_reward", base_url=vllm_stub + "/custom", api_model="my-prm", task="reward",
                     reward_body={"query": "{messages}", "name": "{model}", "fixed": 1}, reward_path="out.scores",
                     max_retries=2, parameters=1e9)
    router = ModelRouter(registry=ModelRegistry({"rm": spec}))
    prm = RewardModelScorer(model="rm", aggregation="min")
    per_step = run_program(prm.score("q", ["a\n\nb\n\nc"], steps=[["a", "b", "c"]]), router)
    assert per_step == [[0.5, 0.6, 0.7]] and prm.reduce_steps(per_step[0]) == 0.5
    body = _VLLMStub.seen[-1][1]
    assert body["name"] == "my-prm" and body["fixed"] == 1
    assert body["query"][-1]["content"] == "a<extra_0>b<extra_0>c<extra_0>"
    assert router.ledger.total().prompt_tokens == 7 and router.ledger.total().flops == 2 * 1e9 * 7
    bad = ModelRouter(registry=ModelRegistry({"rm": spec.model_copy(update={"reward_path": "out.nope"})}))
    with pytest.raises(BackendError, match=r"reward_path: out\.nope"):
        run_program(prm.score("q", ["a"]), bad)
    router.close()
    bad.close()
