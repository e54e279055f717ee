#!/usr/bin/env bash
# Install recbole-perpeft and its stack into the active Python environment (a venv is best).
#   bash install.sh          # the package and everything it runs on
#   bash install.sh --dev    # plus the test tools (pytest, ruff)
# TORCH_SPEC overrides the PyTorch requirement (default: keep an installed torch >= 2.6,
# else torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

python -m pip install --quiet --upgrade pip
if [ -n "${TORCH_SPEC:-}" ]; then
  python -m pip install --quiet "$TORCH_SPEC"
elif ! python - <<'PY' 2>/dev/null
import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 6) else 1)
PY
then
  python -m pip install --quiet "torch==2.13.0"
fi
# RecBole's metadata pins ray<=2.6.3, which cannot coexist with current Ray Tune; install it
# without its dependencies and provide those ourselves (setup.cfg's install_requires).
python -m pip install --quiet --no-deps "recbole==1.2.1"
python -m pip install --quiet -e ".${extras}"
python -c "import recbole_perpeft, recbole, transformers, peft, ray; print('recbole-perpeft', recbole_perpeft.__version__, '| recbole', recbole.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| ray', ray.__version__)"
