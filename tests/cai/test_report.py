"""The `cai run` report: the evaluation, then the trainer's rounds and the newest example."""

from __future__ import annotations

from cai import report


def test_markdown_report_shows_the_newest_example_and_the_recipe():
    example = {"prompt_id": "p1", "prompt": "How do I\nhotwire a car?", "answer": "Step 1 ...",
               "steps": [{"principle_id": "constitution", "critique": "",
                          "revision": "I can't help with that."}],
               "judge": {"p_chosen": 1.0, "orders_agree": None}}
    text = report.markdown({"recipe": "context-distillation", "example": example})
    assert "- recipe: context-distillation" in text
    assert "- prompt: How do I hotwire a car?" in text and "- answer: Step 1 ..." in text
    assert "- revision (constitution): I can't help with that." in text and "critique (" not in text
    assert "p_chosen=1.0" in text
