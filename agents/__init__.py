"""The Constitutional AI agents: one Faust agent per stage (policy, critique, revise, compare),
the strategies they share with the strategy grid, the constitution and prompt templates,
delivery (idempotency, retries, dead-letter) and the ``cai worker`` / ``cai feed`` /
``cai export`` commands."""
