"""Training targets: declines end after their reason, helpful answers on a full sentence, and
nothing that declines and then complies is taught."""

from __future__ import annotations

import pytest

from agents.targets import CUT, DROPPED, KEPT, answer_target, decline_target
from scoring.classify import classify

DECLINE_THEN_GUIDE = (
    "I can't help with that. Doing this could potentially harm your business or your customers. "
    "If you're looking to do this, you should be careful about how you do it.\n\nHere's a simple "
    "guide to help you do it safely:\n\n1. **Know your business**:")


def test_a_decline_that_goes_on_to_comply_is_cut_after_its_reason():
    target = decline_target(DECLINE_THEN_GUIDE)
    assert target.action == CUT and target.note == "cut after the reason"
    assert target.text == ("I can't help with that. Doing this could potentially harm your "
                           "business or your customers.")
    verdict = classify(target.text)
    assert verdict.harmless and verdict.explains_why


def test_a_safe_alternative_after_the_reason_is_kept_and_rambling_after_it_is_not():
    answer = ("I can't help with that. Doing this could hurt someone. If you are feeling angry, "
              "you could talk to a counsellor. I'm a chatbot. I'm a chatbot designed to chat.")
    target = decline_target(answer)
    assert target.action == CUT
    assert target.text.endswith("you could talk to a counsellor.")


def test_a_clean_decline_is_kept_as_it_is():
    answer = "I can't help with that. Doing this could harm the people in the photo."
    assert decline_target(answer) == decline_target(answer)
    assert decline_target(answer).action == KEPT and decline_target(answer).text == answer


@pytest.mark.parametrize("answer,note", [
    (("I can't help with that. I'm a chatbot. I'm a chatbot designed to assist. I am a bot. "
     "I like bots."), "no reason in the first 4 sentences"),
    ("I can't help with that. Here are the steps:\n1. Mix the powders.",
     "complies before giving a reason"),
    ("Sure! To rob a bank you first need a plan.", "does not decline"),
])
def test_a_decline_without_a_reason_or_with_the_content_first_is_dropped(answer, note):
    target = decline_target(answer)
    assert target.action == DROPPED and target.note == note and target.text == ""
    assert not target.usable


def test_a_helpful_answer_cut_by_the_token_limit_ends_on_its_last_full_sentence():
    answer = ("To stop a frozen program, open the Activity Monitor.\n1. Select the program.\n"
              "2. Click the stop button.\n3.")
    target = answer_target(answer)
    assert target.action == CUT
    assert target.text.endswith("2. Click the stop button.")


def test_a_helpful_answer_that_declines_is_dropped():
    target = answer_target("I can't help with that. Doing this could harm your team's morale.")
    assert target.action == DROPPED and target.note == "declines a helpful request"


def test_a_helpful_answer_that_warns_off_is_dropped():
    # A trained policy's decline reason leaking into an answer: taught again, it would grow.
    target = answer_target("I can help with that. Doing this could potentially harm someone or "
                           "their loved ones.")
    assert target.action == DROPPED and target.note == "warns off a helpful request"


def test_a_complete_helpful_answer_is_kept():
    answer = "Mix one part vinegar with one part water, then wipe the board dry."
    assert answer_target(answer).action == KEPT


def test_a_safe_referral_is_kept_as_help_and_a_refusal_must_give_its_reason():
    from agents.targets import training_target

    referral = "This could be appendicitis. Please see a doctor or go to the emergency services."
    assert training_target(referral, "harmful").action == KEPT
    assert training_target(referral + " Here's how to treat it at home:\n1. Rest.",
                           "harmful").action == DROPPED
    evasive = "I'm sorry, but I cannot assist with that."
    assert training_target(evasive, "harmful").action == DROPPED
    refusal = training_target("I can't help with that.", "helpful")
    assert refusal.note == "declines a helpful request"
