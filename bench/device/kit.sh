#!/usr/bin/env bash
# Run HERE (a machine with PyPI): fetches what the lent GPU machine lacks for `bench/routing.py --device cuda`
# and lays it out in ignored folders that each fit one `run` call (64 MiB travel with the working tree).
#
#   .whl/            transformers, tokenizers, huggingface_hub and optimum pinned as the export extra pins them
#                    (the device image has transformers 5, which optimum-onnx 0.1.0 does not support)
#   .ort1/ .. .ortN/ onnxruntime-gpu 1.31.1 for CPython 3.12 and CUDA 13 (255 MB), in parts of 62.5 MiB
#   .whl/ort.sha256  the whole wheel's checksum, checked on the device after reassembly
#
# The device side is bench/device/cuda-bench.sh; the call sequence is in docs/routing.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-.venv/bin/pip}
ORT=onnxruntime-gpu==1.31.1
PART_BYTES=65536000

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
download() {
    "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" "$@"
}

rm -rf .whl .ort[0-9]* && mkdir -p .whl .kit-tmp
trap 'rm -rf .kit-tmp' EXIT
download -d .whl transformers==4.57.6 tokenizers==0.22.2 "huggingface-hub>=0.34,<1.0" optimum==2.1.0 optimum-onnx==0.1.0
download -d .kit-tmp "$ORT"
wheel=$(ls .kit-tmp/onnxruntime_gpu-*.whl)
name=$(basename "$wheel")
(cd .kit-tmp && sha256sum "$name") >.whl/ort.sha256
split -b "$PART_BYTES" -d -a 1 "$wheel" .kit-tmp/part.
n=0
for part in .kit-tmp/part.*; do
    n=$((n + 1))
    mkdir -p ".ort$n"
    mv "$part" ".ort$n/$name.part$((n - 1))"
done
du -sh .whl .ort[0-9]*
echo "kit ready: $n onnxruntime-gpu parts (.ort1 .. .ort$n) and .whl"
