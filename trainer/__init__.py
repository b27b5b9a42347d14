"""The live trainer: SL-CAI (SFT on revisions) and RL-CAI (soft-label DPO, or RLOO against a
preference model it keeps training and serves as the Triton role ``reward``) in rounds over the
``sft`` and ``preferences`` Kafka topics, publishing each promoted policy to Triton.

Modules, in data-flow order:

* ``config``     TrainerConfig: hyper-parameters with help text (the flags), validated, saved
                 per round
* ``data``       decode wire records, tokenise chat turns (labels on assistant tokens only)
* ``losses``     SFT, soft DPO, soft Bradley-Terry, RLOO; log-probs gathered at answer tokens
* ``steps``      PolicyLearner / PreferenceLearner (``serving.reward_model``): LoRA or full FT,
                 round start/end, save
* ``rounds``     one round without Kafka: staleness, data mix, train, probe, promotion gate
* ``gate``       the dev-split promotion gate and its guards
* ``rl``         online RL: samples through the served roles, held-out preference pairs
* ``checkpoint`` atomic round folders: weights, offsets, metrics, records used
* ``loop``       Kafka consumption, round triggers (K examples / T seconds), publish, commit
* ``publisher``  serving.publish (policy and reward) + the policy-versions announcement +
                 the rl-samples topic
* ``cli``        ``cai trainer``
"""
