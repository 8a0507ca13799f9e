"""The HGGEP model (no Qt): config, GEM, backbone, CBAM, transformer, hypergraph, losses, checkpoints.

* :mod:`.config`: every size of the model, saved with the weights; :mod:`.hggep`: the network
  (GEM -> ShuffleNet stages -> CBAM -> transformer -> HAM -> fusion -> genes);
* its parts: :mod:`.gem`, :mod:`.backbone`, :mod:`.cbam`, :mod:`.transformer`, :mod:`.hypergraph`,
  :mod:`.windows` (spatial windows for attention), :mod:`.smoothing`;
* :mod:`.losses` (MSE, ZINB); :mod:`.checkpoint` (the one checkpoint format) and
  :mod:`.pretrained` (self-supervised image-path weights);
* :mod:`._bundled` (the bundled model, loading any checkpoint) and :mod:`.reliability` (how far a
  prediction on this slide can be trusted, from the model card's calibration).
"""
from .config import PRESETS, HGGEPConfig, preset

__all__ = ["HGGEPConfig", "PRESETS", "preset", "HGGEP"]


def __getattr__(name):  # torch stays un-imported until a model is really needed
    if name == "HGGEP":
        from .hggep import HGGEP

        return HGGEP
    raise AttributeError(name)
