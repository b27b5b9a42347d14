"""The wire contract of the pipeline: topic names and partitions, typed records, settings and
explicit topic creation. No worker code lives here."""
