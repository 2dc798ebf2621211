#!/usr/bin/env bash
# Run ON THE LENT GPU MACHINE (through the device tool), from the repository root. Two verbs:
#
#   stage    copies the onnxruntime-gpu parts carried by this call (.ort1/ ...) to $KIT, which outlives the
#            call while the machine stays warm (30 s between calls)
#   install  reassembles and installs only (what `bench` starts with)
#   bench    reassembles and checks the wheel, installs the kit into $SITE (--no-deps, the image has torch,
#            numpy, onnx, jinja2, pyyaml and the CUDA 13 libraries), then builds the Arch-Router-shaped fp16
#            model and runs `bench/routing.py --device cuda`, writing its output to $OUT
set -euo pipefail
KIT=${KIT:-/tmp/outerloop-kit}
SITE=${SITE:-/tmp/outerloop-site}
PYTHON=${PYTHON:-python3}
mkdir -p "$KIT"

stage() {
    local found=0
    for part in .ort[0-9]*/*.part[0-9]; do
        [ -f "$part" ] || continue
        cp "$part" "$KIT/"
        found=1
    done
    [ "$found" = 1 ] || { echo "no .ort*/ part carried by this call" >&2; exit 1; }
    ls -la "$KIT"
}

install_kit() {
    local name
    name=$(awk '{print $2}' .whl/ort.sha256)
    cat $(ls "$KIT"/"$name".part[0-9] | sort) >"$KIT/$name"
    (cd "$KIT" && sha256sum -c "$OLDPWD/.whl/ort.sha256") || {
        echo "onnxruntime-gpu wheel incomplete: stage every .ort part first (have: $(ls "$KIT"))" >&2
        exit 1
    }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade ${PIP_TARGET_FLAGS:-} \
        --target "$SITE" .whl/*.whl "$KIT/$name"
}

bench() {
    install_kit
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    "$PYTHON" - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
from router_model.engine import cuda_loadable
print("cuda loadable:", cuda_loadable())
PY
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    local out=${OUT:-bench/out}
    mkdir -p "$out"
    "$PYTHON" bench/routing.py --device cuda "$@" 2>&1 | tee "$out/routing-cuda.txt"
}

case "${1:-}" in
    stage) stage ;;
    install) install_kit; ls "$SITE" ;;
    bench) shift; bench "$@" ;;
    *) echo "usage: $0 stage|bench [bench/routing.py options]" >&2; exit 2 ;;
esac
