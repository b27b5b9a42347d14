"""The live trainer: SL-CAI (SFT on revisions) and RL-CAI (soft-label DPO or a preference
model) in rounds over the ``sft`` and ``preferences`` Kafka topics, publishing each promoted
policy to Triton.

Modules, in data-flow order:

* ``config``     TrainerConfig: hyper-parameters with help text (the flags), validated, saved
                 per round
* ``data``       decode wire records, tokenise chat turns (labels on assistant tokens only)
* ``losses``     SFT, soft DPO, soft Bradley-Terry; log-probs gathered at answer tokens only
* ``reward``     PreferenceModel: decoder + scalar head, ``score(prompts, answers)``
* ``steps``      PolicyLearner / PreferenceLearner: LoRA or full FT, round start/end, save
* ``rounds``     one round without Kafka: staleness, data mix, train, probe, promotion gate
* ``refusal``    the refusal probe: how often the policy declines benign prompts
* ``checkpoint`` atomic round folders: weights, offsets, metrics, records used
* ``loop``       Kafka consumption, round triggers (K examples / T seconds), publish, commit
* ``publisher``  serving.publish + the policy-versions announcement + Redis version
* ``cli``        ``cai trainer``
"""
