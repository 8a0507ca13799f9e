"""The HGGEP model (no Qt): config, GEM, backbone, CBAM, transformer, hypergraph, losses, checkpoints."""
from .config import PRESETS, HGGEPConfig, preset

__all__ = ["HGGEPConfig", "PRESETS", "preset", "HGGEP"]


def __getattr__(name):  # torch stays un-imported until a model is really needed
    if name == "HGGEP":
        from .hggep import HGGEP

        return HGGEP
    raise AttributeError(name)
