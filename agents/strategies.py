"""Revision and preference strategies: how each stage turns its input into model calls and labels.

The stage agents (policy, critique, revise, compare) stay the same for every strategy; they ask
this module what to call and how to label, so the Faust pipeline and the in-process strategy
grid (``cai grid``, cai/grid/) run exactly the same logic.

Revision strategies (``PipelineSettings.strategy``; carried on every chain record, so records
already in flight finish under the strategy that started them):

* ``critique-revise``: the paper's method: the critic critiques under a drawn principle, the
  reviser rewrites with the critique in its prompt; ``rounds`` rounds.
* ``direct``: the critique stage passes the record through with only the drawn principle; the
  reviser rewrites under the principle's revision request, with no critique.
* ``context``: the *policy* answers the plain prompt again with the constitution as system
  context (``Constitution.system_prompt``), or with ``context_placement='user-suffix'`` with a
  one-sentence reminder (``Constitution.reminder``) after the user's request, which SmolLM2
  heeds far more than a system prompt. Training the policy on (plain prompt -> that answer)
  distils the context into the weights (context distillation). One round.

Preference strategies (``PipelineSettings.preference``):

* ``judge``: the judge's soft (A)/(B) label, both orders averaged (agents/compare.py).
* ``revision-over-initial``: the final revision is chosen over the initial answer, p_chosen=1.
* ``contrastive`` (RLCD, Yang et al. 2023): the current policy answers twice, once with the
  constitution as system prompt ("toward") and once with ``Constitution.contrast_prompt``
  ("away": terse, careless, no reasons; never a request for harmful content), both placed as
  ``context_placement`` says and sampled at ``context_temperature``. The toward
  answer is chosen by construction (p_chosen=1), and a pair whose toward answer refuses a
  helpful prompt is dropped (``contrastive_pair``); or with
  ``contrastive_label='judge'`` the judge's soft probability that it is better is the label.

Context and contrast answers are ordinary calls to the "policy" role, so they always come from
the policy version that is serving: each new version makes the next round's data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from agents import prompts
from agents.constitution import Constitution, CritiquePrinciple
from agents.settings import PipelineSettings
from scoring.classify import classify
from serving.requests import GenerationParams
from streams.records import REVISION_STRATEGIES

logger = logging.getLogger(__name__)

CONTEXT_PRINCIPLE = "constitution"  # principle id recorded for context answers (the whole text)
CONTRASTIVE_PAIR = "contrastive"
ANSWER_VS_DECLINE = "answer-vs-decline"
ANSWER_VS_WARNING = "answer-vs-warning"


@dataclass(frozen=True)
class Call:
    """One model call: which role, the text it gets, and how to sample."""

    role: str
    text: str
    params: GenerationParams


def check_strategy(strategy: str) -> None:
    if strategy not in REVISION_STRATEGIES:
        raise ValueError(f"revision strategy {strategy!r} is not one of "
                         f"{', '.join(REVISION_STRATEGIES)}; "
                         "set CAI_PIPELINE_STRATEGY to one of them")


def uses_critic(strategy: str) -> bool:
    """Whether the critique stage calls the critic (otherwise it passes the record through)."""
    check_strategy(strategy)
    return strategy == "critique-revise"


def roles_called(settings: PipelineSettings) -> tuple[str, ...]:
    """The model roles a pipeline with these settings calls; Triton need not load the others."""
    check_strategy(settings.strategy)
    called = {"policy"}
    if settings.strategy == "critique-revise":
        called |= {"critic", "reviser"}
    elif settings.strategy == "direct":
        called.add("reviser")
    if pair_source(settings) != "none" and (
            settings.preference == "judge"
            or (settings.preference == "contrastive" and settings.contrastive_label == "judge")):
        called.add("judge")
    return tuple(role for role in ("policy", "critic", "reviser", "judge") if role in called)


def recipe_roles(name: str) -> tuple[str, ...]:
    """The model roles recipe ``name`` calls: its pipeline's, with the environment's
    CAI_PIPELINE_* settings applied as the worker applies them, then its trainer's (the reward
    role for a trainer that scores samples with the preference model, ``trainer_roles``)."""
    from core.recipes import RECIPES, env_name
    from core.settings import trainer_roles

    recipe = RECIPES[name]
    fields = {k: v for k, v in recipe.pipeline.items() if env_name(k) not in os.environ}
    return roles_called(PipelineSettings(**fields)) + trainer_roles(recipe.trainer)


def chain_rounds(strategy: str, rounds: int) -> int:
    """Rounds of a chain: asking the same context again adds nothing, so 'context' runs one."""
    check_strategy(strategy)
    return 1 if strategy == "context" else rounds


def pair_source(settings: PipelineSettings) -> str:
    """Which pairs go to the compare stage: 'initial-vs-final', 'policy-samples', 'contrastive' or
    'none'."""
    if settings.compare == "none":
        return "none"
    if settings.preference == "contrastive":
        return CONTRASTIVE_PAIR
    return settings.compare


def principle_for(constitution: Constitution, strategy: str, prompt_id: str, round_: int, seed: int,
                  sample: int) -> str:
    """Principle id a pass-through critique records (the context strategy uses the whole text)."""
    if strategy == "context":
        return CONTEXT_PRINCIPLE
    return constitution.draw_critique(prompt_id, round_, seed, sample).id


# ---- revision ------------------------------------------------------------------------------------

def context_params(settings: PipelineSettings, system: str | None,
                   opening: str = "") -> GenerationParams:
    """A policy answer as the policy stage asks for it, with a system prompt and an answer
    opening."""
    temperature = (settings.temperature if settings.context_temperature is None
                   else settings.context_temperature)
    return GenerationParams(max_new_tokens=settings.policy_max_new_tokens, temperature=temperature,
                            chat=True, system=system, response_prefix=opening)


def with_reminder(prompt: str, reminder: str) -> str:
    """The user's turn with a constitution reminder after it
    (``context_placement='user-suffix'``)."""
    return f"{prompt}\n\n({reminder.strip()})"


def context_opening(constitution: Constitution, settings: PipelineSettings, kind: str) -> str:
    """The answer opening of a context answer: the constitution's decline opening on red-team
    prompts when ``context_opening`` is set, else none. Helpful prompts are always answered
    freely."""
    return constitution.decline_opening if settings.context_opening and kind != "helpful" else ""


def context_call(constitution: Constitution, settings: PipelineSettings, prompt: str,
                 away: bool = False,
                 kind: str = "harmful") -> Call:
    """A policy call on ``prompt`` with the constitution (or, ``away``, the contrast prompt) in
    context."""
    opening = "" if away else context_opening(constitution, settings, kind)
    if settings.context_placement == "user-suffix":
        text = constitution.contrast_prompt if away else constitution.reminder
        return Call("policy", with_reminder(prompt, text), context_params(settings, None, opening))
    system = constitution.contrast_prompt if away else constitution.system_prompt
    return Call("policy", prompt, context_params(settings, system, opening))


def revision_call(constitution: Constitution, settings: PipelineSettings, strategy: str,
                  principle: CritiquePrinciple | None, prompt: str, response: str, critique: str,
                  kind: str = "harmful") -> Call:
    """The call that makes one revision under ``strategy``."""
    check_strategy(strategy)
    if strategy == "context":
        return context_call(constitution, settings, prompt, kind=kind)
    if principle is None:
        raise ValueError(f"strategy {strategy!r} needs a critique principle")
    params = GenerationParams(max_new_tokens=settings.revision_max_new_tokens,
                              temperature=settings.critic_temperature, stop=prompts.STOP,
                              chat=False)
    if strategy == "direct":
        return Call("reviser", prompts.direct_revision_prompt(constitution, principle, prompt,
                                                              response), params)
    return Call("reviser", prompts.revision_prompt(constitution, principle, prompt, response,
                                                   critique), params)


def clean_output(call: Call, text: str) -> str:
    """Raw continuations are cut at the next section marker; chat answers are only stripped."""
    return text.strip() if call.params.chat else prompts.clean_generation(text)


async def run_calls(inference, calls: Sequence[tuple[Call, int]]) -> list:
    """Run (call, seed) pairs, one ``generate`` per distinct (role, params), results in input order.

    A batch may mix strategies (a setting changed while records were in flight), so calls are
    grouped rather than assumed alike.
    """
    groups: dict[tuple[str, GenerationParams], list[int]] = {}
    for index, (call, _seed) in enumerate(calls):
        groups.setdefault((call.role, call.params), []).append(index)
    results: list = [None] * len(calls)
    for (role, params), indices in groups.items():
        items = [(calls[i][0].text, calls[i][1]) for i in indices]
        generations = await inference.generate(role, items, params)
        if len(generations) != len(indices):
            raise RuntimeError(f"{role} returned {len(generations)} results for {len(indices)} "
                               "prompts")
        for i, samples in zip(indices, generations):
            if not samples:
                raise RuntimeError(f"{role} returned no sample for a prompt")
            results[i] = samples[0]
    return results


# ---- preferences ---------------------------------------------------------------------------------

def hard_label(initial: str, final: str) -> tuple[str, str, float] | None:
    """'revision-over-initial': (chosen, rejected, p_chosen), or None when nothing was revised
    or the initial answer already declined harmlessly with a reason (two such declines teach
    nothing about where the line is)."""
    if not final.strip() or final.strip() == initial.strip():
        return None
    if declines_with_reason(initial) or answers_safely(initial):
        return None
    return final, initial, 1.0


def declines_with_reason(answer: str) -> bool:
    """The answer already declines harmlessly and says why: the behaviour a red-team target
    teaches is there."""
    verdict = classify(answer)
    return verdict.harmless and verdict.explains_why


def answers_safely(answer: str) -> bool:
    """The answer points to proper help without refusing and without complying ("This could be
    appendicitis; please see a doctor today"): a red-team prompt that can be answered safely."""
    verdict = classify(answer)
    return verdict.declined and not verdict.refused and not verdict.complied


def sft_answer(strategy: str, initial: str, revision: str) -> str:
    """What a finished chain teaches: its last revision, except that under the 'context'
    strategy a policy answer that already answered safely (``answers_safely``) is kept rather
    than replaced by a forced decline."""
    return initial if strategy == "context" and answers_safely(initial) else revision


def bare_decline(constitution: Constitution) -> str:
    """The constitution's decline without its reason: the first sentence of decline_opening."""
    from agents.targets import sentences

    return sentences(constitution.decline_opening)[0]


def warning_of(constitution: Constitution, decline: str) -> str:
    """What a reasoned decline says after the bare decline (its reason, and any alternative),
    or '' when it does not begin with the bare decline or says nothing more."""
    bare = bare_decline(constitution)
    return decline[len(bare):].strip() if decline.startswith(bare) else ""


def contrast_calls(constitution: Constitution, settings: PipelineSettings, prompt: str,
                   kind: str = "harmful") -> tuple[Call, Call]:
    """The (toward, away) policy calls of one contrastive pair, on the plain prompt."""
    return (context_call(constitution, settings, prompt, kind=kind),
            context_call(constitution, settings, prompt, away=True, kind=kind))


def contrastive_pair(kind: str, toward: str, away: str) -> tuple[str, str] | None:
    """(chosen, rejected) of a pair labelled by construction, or None to drop it.

    The toward answer is chosen, except on a helpful prompt where it refuses (``scoring.classify``):
    the constitution asks for a full answer there, so the construction failed and the pair is
    dropped. Kept, such pairs teach the policy to decline harmless requests in alarming words
    ("How do I kill the engine of a lawnmower?"). A referral alone ("call emergency services")
    is not a refusal and keeps the pair. The pair is not turned around either: preferring the
    away answer over a refusal pushes refusals down everywhere, red-team prompts included.
    """
    if kind == "helpful" and classify(toward).refused:
        return None
    return toward, away


def contrastive_label(p_toward: float | None) -> float:
    """p_chosen of the toward answer: 1 by construction, or the judge's soft label when given."""
    if p_toward is None:
        return 1.0
    return min(1.0, max(0.0, float(p_toward)))
