# Sourced by the GPU scripts (hetero_gpu.sh, engine_gpu.sh) from the repository root, on a
# machine with a CUDA GPU and its own PyTorch but no package registry. Dependencies prfaas
# needs and the machine lacks travel as wheels in .whl/ (docs/heterogeneous.md says which);
# they are installed to /tmp/site, and prfaas runs from src/ without installing.
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PRFAAS_CACHE_DIR=/tmp/prfaas-cache

# The card, the cores and the torch build: the first lines of every GPU report.
gpu_banner() {
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    echo "cpu cores: $(nproc)"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
}
