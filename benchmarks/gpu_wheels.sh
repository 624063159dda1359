#!/usr/bin/env bash
# Fetch, here, the wheels benchmarks/gpu_check.sh needs on the device machine: its image has
# Python 3.12 with torch, torchvision, numpy, scipy, pillow, matplotlib, tqdm, safetensors,
# jinja2, anyio, h11 and click, but not the rest of gensift's dependencies. They go in .whl/
# (ignored by git through .git/info/exclude), which the device call then carries:
#
#     bash benchmarks/gpu_wheels.sh      # here, once; about 10 MB
#     # device run, carry [".whl"]:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl \
    watchdog pydantic pydantic-core pydantic-settings python-dotenv annotated-types \
    typing-inspection loguru platformdirs send2trash imagehash PyWavelets starlette uvicorn
ls .whl
