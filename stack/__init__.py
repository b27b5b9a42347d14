"""The system on one machine: Kafka (KRaft, from Maven Central jars), Redis and Triton started as
local processes (``cai stack``), what the machine needs first (``cai setup``), and the worker
and trainer as child processes of ``cai run`` and ``cai bench``. Runs the code of the floors
below it; imports nothing above them."""
