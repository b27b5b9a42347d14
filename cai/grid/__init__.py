"""`cai grid`: compare revision x preference strategies on the same prompts, budget and seed.

Each grid cell is ``REVISION+PREFERENCE`` (``critique-revise+judge``, ``context+none``,
``none+contrastive`` ...; docs/results-log.md). For every cell, starting from the same base
policy:

1. the training prompts (the training split of the built-in sets, harmful and benign mixed, as
   ``cai run`` picks them) go through the pipeline's own stage functions (agents/policy.py,
   critique.py, revise.py, compare.py, which call agents/strategies.py) in-process, with the
   models run by ``serving.inference.LocalInference`` instead of Triton and no Kafka; records
   are encoded and decoded on every hop, exactly as on the wire;
2. the trainer's round (trainer/rounds.py on trainer/steps.py: LoRA SFT, then soft DPO) trains
   on the resulting SFT and preference records with a fixed number of optimizer steps per kind,
   the same for every cell; examples are cycled (seeded) to fill the steps;
3. with ``--iterations`` > 1 the prompts are split across iterations and each new policy
   version answers, and makes context and contrast answers for, the next iteration's prompts;
4. the final policy is evaluated with ``scoring.evaluate.evaluate_policy`` on held-out prompts
   (``scoring.splits``) that no cell trained on.

The table (Markdown + JSON) gives harmlessness, explains-why and over-refusal with 95% Wilson
intervals, and per cell the CPU minutes: ``time.process_time()`` of this process (user + system
time of all its threads) around the cell's generation, training and evaluation; the grid starts
no child processes. Results are written after every cell; ``--resume`` keeps the rows of a
previous run whose options match (the untrained rows depend only on the model and evaluation).

Example (small budget, SmolLM2, 2 cores)::

    cai grid --model smollm2 --cells context+none none+contrastive --context-placement user-suffix

Modules: ``options`` (cells and options, which are the flags), ``driver`` (running cells and
reference rows), ``report`` (the table, rescoring); ``cai/cli.py`` registers the command.
"""
