"""The wire contract of the pipeline: topic names and partitions, typed records, settings,
explicit topic creation (``cai topics``) and read-only views of the live topics. No worker
code lives here."""
