"""Benchmarks that print figures (none is a test): the pipeline against in-process batched and
sequential runs (``cai bench``), Triton against in-process generation (``cai bench-serving``),
and one DPO step against TRL's (``cai bench-dpo``)."""
