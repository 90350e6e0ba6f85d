"""Loading the compiled CUDA extension (csrc/). Until it is built, calls say how to build it."""

_BUILD_HINT = ("the CUDA extension emo_kernels._C is not built: on a machine with CUDA and nvcc, "
               "run `pip install -e . --no-build-isolation` (see README, 'Building the CUDA "
               "extension')")


def build_hint() -> str:
    return _BUILD_HINT


def load():
    """Return the compiled extension module, or raise ImportError saying how to build it."""
    try:
        from . import _C  # noqa: F401
    except ImportError as e:
        raise ImportError(_BUILD_HINT) from e
    return _C
