"""Fusion: each fuser reads all candidates (and their critiques) and writes one answer."""

from __future__ import annotations

from pydantic import Field

from archon import prompts
from archon.backends.types import GenerationResult
from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams
from archon.verifiers.answers import extract_final_answer


class FuseParams(TechniqueParams):
    fusers: list[str] | None = Field(None, description="one fuser per listed model (default: `model`)")
    samples: int = Field(1, ge=1, le=64, description="fused answers per fuser")
    length_control: bool = Field(False, description="ask for about the longest input's length")


class Fuse(Technique):
    name = "fuse"
    Params = FuseParams
    description = "k fusers each merge the candidates into one"
    params: FuseParams

    def models(self, defaults: Defaults) -> list[str]:
        return list(self.params.fusers or [self.params.model or defaults.model])

    @classmethod
    def model_params(cls) -> tuple[str, ...]:
        return ("model", "fusers")

    def output_count(self, inputs: int) -> int:
        return len(self.params.fusers or [None]) * self.params.samples if inputs else 0

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        n, k = c.inputs.count, self.params.samples
        if not n:
            return [], Flow()
        fusers = self.params.fusers or [c.model]
        prompt = c.question + prompts.template_tokens("fuse.j2") + n * c.inputs.length
        return [CallCost(m, k * prompt, k * c.max_tokens, 1) for m in fusers], Flow(len(fusers) * k, c.max_tokens)

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("nothing to fuse")
            return []
        prompt = prompts.render("fuse.j2", self.params.prompt_template, question=ctx.query.question_text(),
                                candidates=inputs, length_control=self.params.length_control)
        requests = [self.request(ctx, prompt, model=m, n=self.params.samples) for m in self.models(ctx.defaults)]
        results = yield list(requests)
        out: list[Candidate] = []
        for req, res in zip(requests, results, strict=True):
            assert isinstance(res, GenerationResult)
            for s in res.samples:
                out.append(Candidate(text=s.text.strip(), answer=extract_final_answer(s.text), node=ctx.node_id,
                                     model=req.model, parents=[c.id for c in inputs]))
        if not out:
            ctx.note("fusion skipped (budget); passing the inputs through")
            return list(inputs)
        return out
