#!/bin/sh
# Render the model repository for the configured models (CAI_MODEL, CAI_<ROLE>_MODEL),
# then run Triton on it with explicit model control so that publish can hot-swap the policy.
set -e
cai repository render "${CAI_STATE_DIR:-/state}/triton/models"
exec tritonserver \
  --model-repository="${CAI_STATE_DIR:-/state}/triton/models" \
  --model-control-mode=explicit --load-model='*' --disable-auto-complete-config \
  --exit-timeout-secs=5 --strict-readiness=true "$@"
