"""Repeated sampling, and model ensembles when several models are listed."""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from archon import prompts
from archon.backends.types import GenerationResult, Message
from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams
from archon.verifiers.answers import extract_final_answer


class GenerateParams(TechniqueParams):
    models: list[str] | None = Field(None, description="an ensemble: every listed model samples")
    samples: int = Field(1, ge=1, le=1024, description="samples per model")
    stop: list[str] = Field(default_factory=list)
    logprobs: bool = Field(False, description="keep token log-probabilities (adds a mean_logprob score)")


class Generate(Technique):
    name = "generate"
    Params = GenerateParams
    consumes = "query"
    description = "n samples from each of one or more models"
    params: GenerateParams

    def models(self, defaults: Defaults) -> list[str]:
        return list(self.params.models or [self.params.model or defaults.model])

    @classmethod
    def model_params(cls) -> tuple[str, ...]:
        return ("model", "models")

    def output_count(self, inputs: int) -> int:
        return self.params.samples * len(self.params.models or [None])

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        k = self.params.samples
        models = self.params.models or [c.model]
        prompt = c.question + prompts.template_tokens("generate.j2")
        return [CallCost(m, k * prompt, k * c.max_tokens, 1) for m in models], Flow(k * len(models), c.max_tokens)

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        query = ctx.query
        history = [Message(m.role, m.content) for m in query.messages] if query.messages else None  # type: ignore[arg-type]
        user = "" if history else prompts.render("generate.j2", self.params.prompt_template,
                                                  question=query.question_text())
        stop = [*self.params.stop, *query.metadata.get("stop", [])]
        requests = [
            self.request(ctx, user, model=m, n=self.params.samples, stop=stop,
                         logprobs=self.params.logprobs, history=history)
            for m in self.models(ctx.defaults)
        ]
        if query.metadata.get("format") == "completion" and query.prompt is not None:
            # Few-shot completion tasks (a base model continuing "a+b=") are sent as raw
            # text: wrapping them in a chat turn takes base models from 17/30 to 1/30.
            requests = [replace(r, messages=None, prompt=query.prompt) for r in requests]
        results = yield list(requests)
        out: list[Candidate] = []
        for req, res in zip(requests, results, strict=True):
            assert isinstance(res, GenerationResult)
            for s in res.samples:
                scores = {}
                if s.logprobs:
                    mean = s.mean_logprob()
                    if mean is not None:
                        scores["mean_logprob"] = mean
                out.append(Candidate(text=s.text.strip(), answer=extract_final_answer(s.text),
                                     node=ctx.node_id, model=req.model, scores=scores))
        return out
