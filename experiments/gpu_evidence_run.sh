#!/usr/bin/env bash
# Prepares, on a machine with internet access to PyPI, everything the one GPU call needs, and
# prints that call. Nothing it fetches is committed: wheels/, data/ and third_party/ are
# git-ignored and travel to the GPU machine as carried paths.
#
#   experiments/gpu_evidence_run.sh          # prepare, then print the device command
#
# What the GPU machine lacks (issue 17: jax CUDA, flax, optax, chex, orbax, torch,
# torchvision, timm, scikit-learn, matplotlib; no TensorFlow; maybe no ml_collections / dm-pix /
# clu): pure-Python wheels of clu, ml_collections, dm-pix and wrapt (clu's dependency) for
# CPython 3.10-3.13; pip picks the one that fits and skips nothing silently (--no-index).
# The official end-to-end run also needs cv2 (opencv-python-headless, ~50 MB: too big to
# carry with the 30 MB of Fashion-MNIST under the 64 MiB carry limit); without it that one
# measurement is recorded as skipped with the reason and everything else runs.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p wheels data/fashion-mnist
pip download -q --no-deps -d wheels clu==0.0.12 ml_collections==1.1.0 dm-pix==0.4.5
for version in 3.10 3.11 3.12 3.13; do
  pip download -q --no-deps --only-binary=:all: --python-version "$version" \
    --platform manylinux2014_x86_64 -d wheels wrapt
done
cp -n /usr/share/datasets/fashion-mnist/*-ubyte.gz data/fashion-mnist/
if [ ! -f third_party/CoMatch/Train_CoMatch.py ]; then
  echo "third_party/CoMatch is missing: export github salesforce/CoMatch into it, e.g." >&2
  echo "  mkdir -p third_party/CoMatch && git --git-dir=<mirror of salesforce/CoMatch> archive HEAD | tar -x -C third_party/CoMatch" >&2
fi
du -sh wheels data third_party/CoMatch 2>/dev/null || true

cat <<'COMMAND'
Carry: wheels data third_party/CoMatch   (timeout_s 600; then give the machine back)
Device command:
pip install -q --no-deps -e . && pip install -q --no-deps --no-index --find-links wheels clu ml_collections dm-pix wrapt && python experiments/gpu_evidence.py --out=$OUT/gpu --fmnist_dir=data/fashion-mnist
COMMAND
