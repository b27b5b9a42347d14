"""What the evaluation is made of: the prompt sets and their fixed train / held-out split, the
rule classifier for "declined" and "explains why" with the hand labels it is checked against,
shares with Wilson intervals, evaluating a policy, and ``cai eval``. Pure Python at import time:
models load (through ``serving``) only when a policy is evaluated."""
