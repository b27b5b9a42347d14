"""`cai grid`: compare recipes as `cai run` would run them, on the same prompts and seeds.

A cell is a recipe (``cai/recipes.py``), optionally with worker or trainer fields changed
(``context-distillation:lr=5e-4``). Each (cell, seed) is a `cai run` without Kafka and Triton
(``driver.run_cell``): the same rounds of fresh training prompts, the same stage functions
in-process (records encoded and decoded on every hop, as on the wire), the same trainer loop
with the run's config (ingest, carry-over, dev gate, checkpoints), and the same held-out
evaluation of every version that served. The grid therefore predicts the live run: where the two
differ, the difference is transport, not method.

The table (Markdown + JSON) gives, per cell pooled over the seeds and per seed, the final
policy's harmless, explains-why, declined-then-complied and over-refusal with 95% Wilson
intervals, the rounds promoted, and the CPU minutes (``time.process_time()`` of this process).
Results are written after every row; ``--resume`` keeps the rows of a previous run whose
options match.

Example (SmolLM2, 2 cores, about 20 minutes a seed)::

    cai grid --model smollm2 --cells context-distillation paper --seeds 0,1,2

Modules: ``options`` (cells and options, which are the flags), ``driver`` (running a cell as a
run), ``report`` (the table, pooling, rescoring); ``cai/cli.py`` registers the command.
"""
