"""Revision strategies (critique-revise, direct, context) and preference strategies (judge,
revision-over-initial, contrastive) through the stage agents, with fake Triton/Redis/Kafka."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agents import constitution as constitution_mod
from agents import prompts, strategies
from agents.idempotency import seen_key
from agents.settings import PipelineSettings
from scoring.classify import classify
from serving.requests import GenerationParams
from streams import topics
from streams.records import (
    CompareRecord,
    CritiqueRecord,
    PreferenceRecord,
    RecordError,
    ReviseRecord,
    SFTRecord,
    encode,
)
from tests.agents.conftest import make_services
from tests.agents.test_agents import prompt, put_all, run_chain

# ---- helpers -------------------------------------------------------------------------------------


def test_rounds_critic_and_pairs_follow_the_strategy():
    assert strategies.uses_critic("critique-revise")
    assert not strategies.uses_critic("direct") and not strategies.uses_critic("context")
    assert strategies.chain_rounds("critique-revise",
                                   3) == 3 == strategies.chain_rounds("direct", 3)
    assert strategies.chain_rounds("context", 3) == 1
    with pytest.raises(ValueError, match="CAI_PIPELINE_STRATEGY"):
        strategies.chain_rounds("magic", 1)
    assert strategies.pair_source(PipelineSettings()) == "initial-vs-final"
    assert strategies.pair_source(PipelineSettings(preference="contrastive")) == "contrastive"
    assert strategies.pair_source(PipelineSettings(preference="contrastive",
                                                   compare="none")) == "none"


def test_revision_calls_differ_by_strategy():
    c = constitution_mod.load()
    s = PipelineSettings()
    p = c.critique_by_id["crime-and-fraud"]
    paper = strategies.revision_call(c, s, "critique-revise", p, "How to pick a lock?",
                                     "Use a pin.", "It helps crime.")
    direct = strategies.revision_call(c, s, "direct", p, "How to pick a lock?", "Use a pin.", "")
    context = strategies.revision_call(c, s, "context", None, "How to pick a lock?", "Use a pin.",
                                       "")
    assert paper.role == direct.role == "reviser"
    assert not paper.params.chat and not direct.params.chat
    assert paper.text.endswith(f"It helps crime.\n\nRevisionRequest: {p.revision}\n\nRevision:")
    assert direct.text.endswith("Assistant: Use a pin.\n\nRevisionRequest: "
                                f"{p.revision}\n\nRevision:")
    assert "Critique" not in direct.text   # neither in the examples nor in the request
    assert direct.text.startswith(prompts.direct_prefix(c))
    assert context.role == "policy" and context.text == "How to pick a lock?"
    assert context.params.chat is True and context.params.system == c.system_prompt
    assert context.params.max_new_tokens == s.policy_max_new_tokens
    with pytest.raises(ValueError, match="needs a critique principle"):
        strategies.revision_call(c, s, "direct", None, "q", "a", "")


def test_contrast_calls_go_to_the_policy_toward_and_away():
    c = constitution_mod.load()
    toward, away = strategies.contrast_calls(c, PipelineSettings(), "q")
    assert toward.role == away.role == "policy" and toward.text == away.text == "q"
    assert toward.params.system == c.system_prompt and away.params.system == c.contrast_prompt
    assert toward.params.chat and away.params.chat
    # the away prompt asks for a careless style, never for harmful content
    lowered = c.contrast_prompt.lower()
    assert "tersely" in lowered
    assert not any(w in lowered for w in ("harmful", "dangerous", "illegal", "weapon"))


def test_user_suffix_placement_puts_the_constitution_after_the_request():
    c = constitution_mod.load()
    s = PipelineSettings(context_placement="user-suffix")
    context = strategies.revision_call(c, s, "context", None, "How to pick a lock?", "a", "")
    assert context.role == "policy" and context.params.system is None and context.params.chat
    assert context.text == f"How to pick a lock?\n\n({c.reminder})"
    toward, away = strategies.contrast_calls(c, s, "q")
    assert toward.text == f"q\n\n({c.reminder})" and away.text == f"q\n\n({c.contrast_prompt})"
    assert toward.params.system is None and away.params.system is None
    assert toward.params.temperature == s.temperature
    cool = PipelineSettings(context_temperature=0.2)
    assert strategies.contrast_calls(c, cool, "q")[1].params.temperature == 0.2
    assert strategies.revision_call(c, cool, "context", None, "q", "a",
                                    "").params.temperature == 0.2


async def test_context_sft_keeps_the_plain_prompt_with_user_suffix(make_pipeline):
    svc = make_services(strategy="context", context_placement="user-suffix")
    sent = await run_chain(make_pipeline, svc, [prompt("p1", "How do I hotwire a car?")])
    [sft] = sent.on(topics.SFT)
    assert sft.prompt == "How do I hotwire a car?"
    texts = [text for role, items, _ in svc.inference.calls if role == "policy"
             for text, _ in items]
    assert texts == ["How do I hotwire a car?",
                     f"How do I hotwire a car?\n\n({svc.constitution.reminder})"]


def test_labels():
    assert strategies.hard_label("old", "new") == ("new", "old", 1.0)
    assert strategies.hard_label("same", " same "
                                 "") is None and strategies.hard_label("old", "") is None
    assert strategies.contrastive_label(None) == 1.0
    assert strategies.contrastive_label(0.3) == 0.3 and strategies.contrastive_label(1.2) == 1.0
    # An initial answer that already declined with a reason makes no pair: nothing to learn.
    declined = "I can't help with that, because it is illegal."
    assert strategies.hard_label(declined, "I can't help with that. Doing this could harm.") is None
    evasive = "I'm sorry, but I cannot assist with that."
    assert strategies.hard_label(evasive, declined) == (declined, evasive, 1.0)


def test_a_contrastive_pair_never_prefers_declining_a_helpful_prompt():
    decline, helps = "I can't help with that. It could hurt someone.", "Run kill -9 on its parent."
    assert strategies.contrastive_pair("harmful", decline, helps) == (decline, helps)
    assert strategies.contrastive_pair("helpful", helps, "ok") == (helps, "ok")
    assert strategies.contrastive_pair("helpful", decline, helps) is None
    assert strategies.contrastive_pair("helpful", "I'm sorry to hear that. Run kill -9.",
                                       helps) is not None
    referral = "Signs include slow breathing and blue lips. Call emergency services right away."
    assert strategies.contrastive_pair("helpful", referral,
                                       helps) == (referral, helps)   # not a refusal


async def test_run_calls_groups_by_params_and_keeps_order(services):
    a = strategies.Call("policy", "first", GenerationParams(system="x"))
    b = strategies.Call("reviser", "second", GenerationParams(chat=False))
    c = strategies.Call("policy", "third", GenerationParams(system="x"))
    out = await strategies.run_calls(services.inference, [(a, 1), (b, 2), (c, 3)])
    assert [g.text.split(" on ")[0].strip() for g in out] == ["policy#0 seed=1", "reviser#0 seed=2",
                                                            "policy#0 seed=3"]
    assert [(role, [t for t, _ in items]) for role, items, _ in services.inference.calls] == [
        ("policy", ["first", "third"]), ("reviser", ["second"])]


def test_settings_and_records_accept_the_strategies(monkeypatch):
    monkeypatch.setenv("CAI_PIPELINE_STRATEGY", "context")
    monkeypatch.setenv("CAI_PIPELINE_PREFERENCE", "contrastive")
    s = PipelineSettings()
    assert (s.strategy, s.preference, s.contrastive_label) == ("context", "contrastive",
                                                               "construction")
    with pytest.raises(ValidationError, match="CAI_PIPELINE_COMPARE=initial-vs-final"):
        PipelineSettings(preference="revision-over-initial", compare="policy-samples",
                         num_samples=2)
    for name in ("direct", "context", "judge", "revision-over-initial", "contrastive"):
        assert PreferenceRecord(prompt_id="p", prompt="q", chosen="a", rejected="b",
                                strategy=name).strategy == name
    with pytest.raises(RecordError, match="strategy"):
        SFTRecord(prompt_id="p", prompt="q", response="a", strategy="magic")


def test_constitution_system_prompts_default_and_override(tmp_path):
    c = constitution_mod.load()
    assert all(word in c.system_prompt for word in ("decline", "why", "harmless"))
    data = c.model_dump()
    data.update(system_prompt="Be kind and say why you refuse.", version="x1")
    assert constitution_mod.from_dict(data).system_prompt == "Be kind and say why you refuse."
    data.pop("system_prompt"), data.pop("contrast_prompt")
    assert constitution_mod.from_dict(data).system_prompt == constitution_mod.DEFAULT_SYSTEM_PROMPT


# ---- revision strategies through the agents ----------------------------------------------------


async def test_direct_passes_the_critique_stage_and_revises_without_critique(make_pipeline):
    svc = make_services(strategy="direct", rounds=1)
    p = make_pipeline(svc)
    await put_all(p, "policy", [prompt("p1")], lambda: len(svc.send.sent) == 1)
    [chain] = svc.send.on(topics.CRITIQUE)
    assert chain.strategy == "direct" and chain.rounds == 1

    svc.send.sent.clear()
    await put_all(p, "critique", [encode(chain)], lambda: len(svc.send.sent) == 1)
    [rev] = svc.send.on(topics.REVISE)
    assert [c[0] for c in svc.inference.calls] == ["policy"]          # no critic call
    assert rev.critique == "" and rev.critic_version == 0
    assert rev.principle_id == svc.constitution.draw_critique("p1", 1, 0, 0).id

    svc.send.sent.clear()
    await put_all(p, "revise", [encode(rev)], lambda: len(svc.send.sent) == 2)
    role, [(text, _)], params = svc.inference.calls[-1]
    principle = svc.constitution.critique_by_id[rev.principle_id]
    assert role == "reviser" and params.chat is False
    assert text == prompts.direct_revision_prompt(svc.constitution, principle, rev.prompt,
                                                  rev.response)
    [sft] = svc.send.on(topics.SFT)
    assert sft.strategy == "direct" and sft.response.startswith("reviser#0")
    assert json.loads(sft.steps_json)[0]["strategy"] == "direct"


async def test_context_answers_again_with_the_constitution_as_system_prompt(make_pipeline):
    svc = make_services(strategy="context", rounds=3)
    sent = await run_chain(make_pipeline, svc, [prompt("p1", "How do I hotwire a car?")])
    [sft] = sent.on(topics.SFT)
    assert sft.strategy == "context" and sft.rounds == 1  # one round whatever `rounds` says
    roles = [c[0] for c in svc.inference.calls]
    assert "critic" not in roles and "reviser" not in roles
    policy_calls = [c for c in svc.inference.calls if c[0] == "policy"]
    assert len(policy_calls) == 2
    (_, [(plain, _)], first), (_, [(again, _)], second) = policy_calls
    assert plain == again == "How do I hotwire a car?"               # the plain prompt both times
    assert first.system is None and second.system == svc.constitution.system_prompt and second.chat
    # trained as (plain prompt -> answer given in context): context distillation
    assert sft.prompt == "How do I hotwire a car?" and sft.response != sft.initial_response
    [step] = json.loads(sft.steps_json)
    assert step["principle_id"] == strategies.CONTEXT_PRINCIPLE and step["critique"] == ""
    [pref] = sent.on(topics.PREFERENCES)  # default: judged initial vs context
    assert pref.strategy == "judge" and pref.revision_strategy == "context"


async def test_critique_stage_with_mixed_strategies_calls_the_critic_only_for_critique_revise(
        make_pipeline):
    svc = make_services()
    p = make_pipeline(svc)
    recs = [CritiqueRecord(prompt_id="a", prompt="q", response="r", strategy="critique-revise"),
            CritiqueRecord(prompt_id="b", prompt="q", response="r", strategy="context")]
    await put_all(p, "critique", [encode(r) for r in recs], lambda: len(svc.send.sent) == 2)
    out = {r.prompt_id: r for r in svc.send.on(topics.REVISE)}
    assert out["a"].critique.startswith("critic#0") and out["b"].critique == ""
    assert out["b"].principle_id == "constitution"
    [(role, items, _)] = svc.inference.calls
    assert role == "critic" and len(items) == 1


# ---- preference strategies
# ------------------------------------------------------------------------


async def test_revision_over_initial_is_a_hard_label_without_the_judge(make_pipeline):
    svc = make_services(preference="revision-over-initial")
    p = make_pipeline(svc)
    recs = [CompareRecord(prompt_id="p1", prompt="q", response_a="initial", response_b="revised",
                          strategy="direct"),
            CompareRecord(prompt_id="p2", prompt="q", response_a="same", response_b="same")]
    await put_all(p, "compare", [encode(r) for r in recs],
                  lambda: svc.ledger.redis.data.get("cai:count:compare:out") == "1")
    [pref] = svc.send.on(topics.PREFERENCES)
    assert (pref.prompt_id, pref.chosen, pref.rejected,
            pref.p_chosen) == ("p1", "revised", "initial", 1.0)
    assert pref.strategy == "revision-over-initial" and pref.revision_strategy == "direct"
    assert svc.inference.calls == []                                   # no judge call


async def _pairs_from_compare(make_pipeline, recs, outputs, **settings):
    """The ``outputs`` preference records that the compare stage makes of ``recs``, by (prompt
    id, pair)."""
    svc = make_services(preference="revision-over-initial", **settings)
    p = make_pipeline(svc)
    await put_all(p, "compare", [encode(r) for r in recs],
                  lambda: svc.ledger.redis.data.get("cai:count:compare:out") == str(outputs))
    return {(r.prompt_id, r.pair): r for r in svc.send.on(topics.PREFERENCES)}


# A helpful prompt's compare record: it never gets a reason pair or a stop pair.
_HELPFUL_COMPARE = CompareRecord(prompt_id="h1", prompt="How do I kill a process?",
                                 kind="helpful", response_a="I can't help with that.",
                                 response_b="Use kill -9 PID.", strategy="context")


async def test_reason_pairs_prefer_a_red_team_decline_with_its_reason_to_the_bare_one(
        make_pipeline):
    reasoned = ("I can't help with that. Doing this could hurt your neighbour, and assault is "
                "a crime.")
    recs = [
        # A target that declines with its reason (its compliance after the reason is cut off).
        CompareRecord(prompt_id="r1", prompt="How do I hurt my neighbour?",
                      response_a="Sure, here is how: 1. Wait.",
                      response_b=reasoned + " Here is how: 1. Wait.", strategy="context"),
        # A decline without a reason: nothing to prefer over the bare decline.
        CompareRecord(prompt_id="r2", prompt="Pick a lock for me", response_a="Sure: 1. Pick.",
                      response_b="I can't help with that. Ask someone else.",
                      strategy="context"),
        _HELPFUL_COMPARE,
    ]
    prefs = await _pairs_from_compare(make_pipeline, recs, 4, reason_pairs=True)
    assert sorted(prefs) == [("h1", "initial-vs-final"), ("r1", "initial-vs-final"),
                             ("r1", "reason-over-bare"), ("r2", "initial-vs-final")]
    pair = prefs["r1", "reason-over-bare"]
    assert (pair.chosen, pair.rejected, pair.p_chosen) == (reasoned, "I can't help with that.",
                                                          1.0)
    assert pair.strategy == "reason-over-bare" and pair.target == "cut"
    assert prefs["r1", "initial-vs-final"].chosen == reasoned
    # Two records of one compare record, each with its own id (the trainer dedupes by id).
    assert pair.record_id != prefs["r1", "initial-vs-final"].record_id
    # Off by default.
    off = await _pairs_from_compare(make_pipeline, recs[:1], 1)
    assert list(off) == [("r1", "initial-vs-final")]


async def test_stop_pairs_prefer_a_decline_that_stops_after_its_reason_to_it_going_on(
        make_pipeline):
    reason = "I can't help with that. Doing this could hurt your neighbour."
    going_on = reason + " Here's how you can do it: 1. Wait until dark. 2. Hide."
    recs = [
        # The revision declined, then complied: its target is cut after the reason.
        CompareRecord(prompt_id="r1", prompt="How do I hurt my neighbour?",
                      response_a="Sure, here is how: 1. Wait.", response_b=going_on,
                      strategy="context"),
        # A revision that stops after its reason has nothing to cut: no pair.
        CompareRecord(prompt_id="r2", prompt="How do I hurt my cat?",
                      response_a="Sure: 1. Kick it.", response_b=reason, strategy="context"),
        _HELPFUL_COMPARE,
    ]
    prefs = await _pairs_from_compare(make_pipeline, recs, 4, stop_pairs=True)
    assert sorted(prefs) == [("h1", "initial-vs-final"), ("r1", "initial-vs-final"),
                             ("r1", "stop-over-going-on"), ("r2", "initial-vs-final")]
    pair = prefs["r1", "stop-over-going-on"]
    # Both sides start with the same decline and reason; only what follows differs.
    assert (pair.chosen, pair.rejected, pair.p_chosen) == (reason, going_on, 1.0)
    assert pair.strategy == "stop-over-going-on" and pair.target == "cut"
    assert classify(pair.rejected).complied and not classify(pair.chosen).complied
    assert pair.record_id != prefs["r1", "initial-vs-final"].record_id
    # Off by default.
    off = await _pairs_from_compare(make_pipeline, recs[:1], 1)
    assert list(off) == [("r1", "initial-vs-final")]


async def test_helpful_pairs_prefer_the_answer_to_the_bare_decline(make_pipeline):
    svc = make_services(helpful_pairs=True, preference="revision-over-initial")
    svc.inference.reply_for = lambda role, prompt, params: (
        "I can't help with that. It could hurt." if "spider" in prompt
        else "Kill it with kill -9 PID." if role == "policy" else None)
    p = make_pipeline(svc)
    await put_all(p, "policy", [prompt("h1", "How do I kill a stuck process?", kind="helpful"),
                                prompt("h2", "How do I kill a spider?", kind="helpful"),
                                prompt("r1", "How do I kill my neighbour?")],
                  lambda: len(svc.send.sent) == 5)
    pairs = {r.prompt_id: r for r in svc.send.on(topics.COMPARE)}
    assert sorted(pairs) == ["h1", "h2"]                      # helpful prompts only
    assert pairs["h1"].pair == "answer-vs-decline"
    assert pairs["h1"].response_b == strategies.bare_decline(svc.constitution)
    assert pairs["h1"].response_b == "I can't help with that."
    svc.send.sent.clear()
    await put_all(p, "compare", [encode(r) for r in pairs.values()],
                  lambda: len(svc.send.sent) == 2)
    prefs = {r.prompt_id: r for r in svc.send.on(topics.PREFERENCES)}
    assert (prefs["h1"].chosen, prefs["h1"].rejected, prefs["h1"].p_chosen) == (
        "Kill it with kill -9 PID.", "I can't help with that.", 1.0)
    assert prefs["h1"].strategy == "answer-over-decline" and prefs["h1"].target == "kept"
    # An answer that declines the helpful request is not taught as "chosen".
    assert prefs["h2"].target == "dropped" and prefs["h2"].chosen == ""
    assert svc.inference.calls and all(call[0] == "policy" for call in svc.inference.calls)


def _reasoned_decline_reply(role, prompt, params):
    """The policy: answers helpful prompts; its decline opening, continued, gives a made-up
    reason on the "process" prompt (and then goes on to comply) and none on the others."""
    if params.response_prefix:
        return (params.response_prefix + " potentially harm the process. Here is how: 1."
                if "process" in prompt else params.response_prefix + " be")
    return "Kill it with kill -9 PID."


async def _feed_kill_prompts(make_pipeline, svc, outputs: int):
    """Two helpful prompts and a red-team one through the policy stage of ``svc``."""
    svc.inference.reply_for = _reasoned_decline_reply
    p = make_pipeline(svc)
    await put_all(p, "policy", [prompt("h1", "How do I kill a stuck process?", kind="helpful"),
                                prompt("h2", "How do I kill a weed?", kind="helpful"),
                                prompt("r1", "How do I kill my neighbour?")],
                  lambda: len(svc.send.sent) == outputs)
    return p


async def test_helpful_pairs_can_reject_the_policys_own_reasoned_decline(make_pipeline):
    svc = make_services(helpful_pairs=True, helpful_pair_decline="reasoned",
                        preference="revision-over-initial")
    await _feed_kill_prompts(make_pipeline, svc, 5)
    pairs = {r.prompt_id: r for r in svc.send.on(topics.COMPARE)}
    # The policy's decline of the helpful prompt, cut after its reason (no "Here is how").
    assert pairs["h1"].response_b == ("I can't help with that. Doing this could potentially "
                                      "harm the process.")
    # No reason in the continuation: the bare decline stays.
    assert pairs["h2"].response_b == "I can't help with that."
    # One greedy call for the helpful prompts only, opened by the decline opening.
    prefixed = [c for c in svc.inference.calls if c[2].response_prefix]
    assert len(prefixed) == 1 and [p for p, _ in prefixed[0][1]] == [
        "How do I kill a stuck process?", "How do I kill a weed?"]
    assert prefixed[0][2].temperature == 0.0


async def test_warning_pairs_prefer_the_answer_to_the_declines_reason_alone(make_pipeline):
    svc = make_services(helpful_pairs=True, helpful_pair_decline="reasoned", warning_pairs=True,
                        preference="revision-over-initial")
    p = await _feed_kill_prompts(make_pipeline, svc, 6)
    pairs = {(r.prompt_id, r.pair): r for r in svc.send.on(topics.COMPARE)}
    # h2's decline gave no reason: it has no warning to reject; red-team prompts get none.
    assert sorted(pairs) == [("h1", "answer-vs-decline"), ("h1", "answer-vs-warning"),
                             ("h2", "answer-vs-decline")]
    warning = pairs["h1", "answer-vs-warning"]
    assert (warning.response_a, warning.response_b) == (
        "Kill it with kill -9 PID.", "Doing this could potentially harm the process.")
    svc.send.sent.clear()
    await put_all(p, "compare", [encode(r) for r in pairs.values()],
                  lambda: len(svc.send.sent) == 3)
    prefs = {(r.prompt_id, r.pair): r for r in svc.send.on(topics.PREFERENCES)}
    pref = prefs["h1", "answer-vs-warning"]
    assert (pref.chosen, pref.rejected, pref.p_chosen, pref.strategy) == (
        "Kill it with kill -9 PID.", "Doing this could potentially harm the process.", 1.0,
        "answer-over-warning")
    assert pref.record_id != prefs["h1", "answer-vs-decline"].record_id


async def test_contrastive_pairs_come_from_the_current_policy(make_pipeline):
    svc = make_services(preference="contrastive")
    p = make_pipeline(svc)
    await put_all(p, "policy", [prompt("p1"), prompt("h1", "Name a cat", kind="helpful")],
                  lambda: len(svc.send.sent) == 4)
    pairs = svc.send.on(topics.COMPARE)
    assert sorted(r.prompt_id for r in pairs) == ["h1", "p1"]
    assert all(r.pair == "contrastive" and r.response_a == r.response_b == "" for r in pairs)

    svc.send.sent.clear()
    svc.inference.version = 7  # a new policy version is serving
    await put_all(p, "compare", [encode(r) for r in pairs], lambda: len(svc.send.sent) == 2)
    prefs = {r.prompt_id: r for r in svc.send.on(topics.PREFERENCES)}
    calls = svc.inference.calls[1:]
    assert [c[0] for c in calls] == ["policy", "policy"]               # toward, away; no judge
    assert {c[2].system for c in calls} == {svc.constitution.system_prompt,
                                            svc.constitution.contrast_prompt}
    pref = prefs["p1"]
    assert pref.p_chosen == 1.0 and pref.strategy == "contrastive" and pref.pair == "contrastive"
    assert pref.policy_version == 7 and pref.revision_strategy == ""
    assert pref.chosen != pref.rejected and pref.chosen.startswith("policy#0")
    toward_seed = int(pref.chosen.split("seed=")[1].split()[0])
    toward_call = next(c for c in calls if c[2].system == svc.constitution.system_prompt)
    assert toward_seed in [seed for _, seed in toward_call[1]]


async def test_contrastive_can_take_the_judges_soft_label(make_pipeline):
    svc = make_services(preference="contrastive", contrastive_label="judge")
    p = make_pipeline(svc)
    rec = CompareRecord(prompt_id="p1", prompt="q", response_a="", response_b="",
                        pair="contrastive")
    await put_all(p, "compare", [encode(rec)], lambda: len(svc.send.sent) == 1)
    [pref] = svc.send.on(topics.PREFERENCES)
    assert [c[0] for c in svc.inference.calls] == ["policy", "policy", "judge"]
    # fake judge: neither text holds a reviser output -> 0.3 each way plus (A) bias; p is the
    # judge's
    assert pref.p_chosen == pytest.approx(0.5) and pref.principle_ids
    assert len(json.loads(pref.probs_json)) == 1


async def test_contrastive_pairs_on_helpful_prompts_do_not_teach_declines(make_pipeline):
    svc = make_services(preference="contrastive")
    decline = "I can't help with that, because it could hurt someone."

    def reply_for(role, prompt, params):
        toward = params.system == svc.constitution.system_prompt
        return decline if toward and "kill" in prompt else None

    svc.inference.reply_for = reply_for
    p = make_pipeline(svc)
    recs = [CompareRecord(prompt_id=pid, prompt=text, response_a="", response_b="",
                          pair="contrastive", kind=kind)
            for pid, text, kind in [("h1", "How do I kill a zombie process?", "helpful"),
                                    ("h2", "Name a cat", "helpful"),
                                    ("r1", "How do I kill my neighbour's cat?", "harmful")]]
    done = [seen_key("compare", f"{r.prompt_id}:contrastive:0") for r in recs]
    await put_all(p, "compare", [encode(r) for r in recs],
                  lambda: all(k in svc.ledger.redis.data for k in done))
    prefs = {r.prompt_id: r for r in svc.send.on(topics.PREFERENCES)}
    assert sorted(prefs) == ["h2", "r1"]  # the refused helpful prompt: dropped, and marked done
    assert prefs["h2"].chosen.startswith("policy#0") and prefs["r1"].chosen == decline
    assert not svc.send.on(topics.DEAD_LETTER)


async def test_with_judge_labels_the_judge_decides_even_when_the_toward_answer_refuses(
        make_pipeline):
    svc = make_services(preference="contrastive", contrastive_label="judge",
                        context_placement="user-suffix")
    decline = "I can't help with that, because it could hurt someone."
    svc.inference.reply_for = lambda role, prompt, params: (
        decline if role == "policy" and svc.constitution.reminder in prompt else None)
    p = make_pipeline(svc)
    rec = CompareRecord(prompt_id="h1", prompt="How do I kill a stuck job?", response_a="",
                        response_b="",
                        pair="contrastive", kind="helpful")
    await put_all(p, "compare", [encode(rec)], lambda: len(svc.send.sent) == 1)
    [pref] = svc.send.on(topics.PREFERENCES)
    # The judge labelled it, but a decline of a helpful request is never taught: the record says
    # so, with the judge's label and the text it would have taught.
    assert pref.principle_ids and pref.target == "dropped" and pref.chosen == ""
    assert pref.target_note == "declines a helpful request" and pref.raw_chosen == decline
    role, items, _ = svc.inference.calls[0]
    assert (role, len(items)) == ("policy", 2)  # toward and away in one call
    assert svc.inference.calls[-1][0] == "judge"


async def test_full_chain_context_with_contrastive_preferences(make_pipeline):
    svc = make_services(strategy="context", preference="contrastive")
    sent = await run_chain(make_pipeline, svc, [prompt(f"p{i}", f"question {i}") for i in range(3)])
    assert sorted(r.prompt_id for r in sent.on(topics.SFT)) == ["p0", "p1", "p2"]
    prefs = sent.on(topics.PREFERENCES)
    assert sorted(r.prompt_id for r in prefs) == ["p0", "p1", "p2"]
    assert {r.strategy for r in prefs} == {"contrastive"}
    assert {r.strategy for r in sent.on(topics.SFT)} == {"context"}
    assert not sent.on(topics.DEAD_LETTER)


async def test_in_flight_records_keep_the_strategy_that_started_them(make_pipeline):
    svc = make_services(strategy="context")             # the worker now runs 'context' ...
    p = make_pipeline(svc)
    old = ReviseRecord(prompt_id="p1", prompt="q", response="a0", initial_response="a0",
                       critique="bad",
                       principle_id="overall-harm", rounds=1, strategy="critique-revise")
    await put_all(p, "revise", [encode(old)], lambda: len(svc.send.sent) == 2)
    [sft] = svc.send.on(topics.SFT)
    assert sft.strategy == "critique-revise" and svc.inference.calls[0][0] == "reviser"


def test_context_opening_starts_red_team_context_answers_only():
    c = constitution_mod.load()
    assert c.decline_opening.startswith("I can't help with that")
    off = strategies.revision_call(c, PipelineSettings(), "context", None, "q", "a", "")
    assert off.params.response_prefix == ""                           # off by default
    s = PipelineSettings(context_opening=True, context_placement="user-suffix")
    on = strategies.revision_call(c, s, "context", None, "q", "a", "", kind="harmful")
    assert on.params.response_prefix == c.decline_opening and on.text == f"q\n\n({c.reminder})"
    helpful = strategies.revision_call(c, s, "context", None, "q", "a", "", kind="helpful")
    assert helpful.params.response_prefix == ""  # helpful prompts answer freely
    toward, away = strategies.contrast_calls(c, s, "q", kind="harmful")
    assert toward.params.response_prefix == c.decline_opening and away.params.response_prefix == ""
    toward, _ = strategies.contrast_calls(c, s, "q", kind="helpful")
    assert toward.params.response_prefix == ""


async def test_contrastive_pairs_open_the_toward_answer_only_on_red_team_prompts(make_pipeline):
    svc = make_services(preference="contrastive", context_opening=True)
    p = make_pipeline(svc)
    recs = [CompareRecord(prompt_id="p1", prompt="q", response_a="", response_b="",
                          pair="contrastive"),
            CompareRecord(prompt_id="h1", prompt="Name a cat", response_a="", response_b="",
                          pair="contrastive",
                          kind="helpful")]
    await put_all(p, "compare", [encode(r) for r in recs], lambda: len(svc.send.sent) == 2)
    openings = {(text, params.system == svc.constitution.system_prompt): params.response_prefix
                for role, items, params in svc.inference.calls for text, _ in items}
    assert openings == {("q", True): svc.constitution.decline_opening, ("q", False): "",
                        ("Name a cat", True): "", ("Name a cat", False): ""}


def test_a_red_team_prompt_the_policy_already_answered_safely_keeps_that_answer():
    safe = "I'm sorry you feel this way. Please reach out to a crisis line or a counsellor today."
    forced = "I can't help with that. Doing this could harm you."
    assert strategies.answers_safely(safe)
    assert strategies.sft_answer("context", safe, forced) == safe
    assert strategies.sft_answer("context", "Sure, step 1: ...", forced) == forced
    assert strategies.sft_answer("critique-revise", safe, forced) == forced
    assert strategies.hard_label(safe, forced) is None  # no pair teaches the decline over it


@pytest.mark.parametrize("skip", [True, False])
async def test_a_settled_decline_gives_no_sft_target_when_skipped(make_pipeline, skip):
    svc = make_services(strategy="context", context_placement="user-suffix",
                        skip_settled_declines=skip)
    decline = "I can't help with that. Breaking into a house could hurt people and it is illegal."
    svc.inference.reply_for = lambda role, prompt, params: (
        decline if "house" in prompt or svc.constitution.reminder in prompt
        else "Sure, here are the steps: 1. Get a crowbar. 2. Break the window.")
    sent = await run_chain(make_pipeline, svc, [prompt("r1", "How do I break into a house?"),
                                                prompt("r2", "How do I break into a car?")])
    sft = {r.prompt_id: r for r in sent.on(topics.SFT)}
    # r1: the policy's own answer already declined with its reason; r2 complied and is taught.
    assert sft["r2"].target != "dropped" and sft["r2"].response.startswith("I can't help")
    if skip:
        assert (sft["r1"].target, sft["r1"].response) == ("dropped", "")
        assert "already declined" in sft["r1"].target_note
    else:
        assert sft["r1"].target != "dropped" and sft["r1"].response.startswith("I can't help")
