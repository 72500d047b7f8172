"""The embedded synthetic world: generated data, an oracle judge, and two tiny reference models."""

from trimtab.worlds.synthetic.generator import SyntheticWorld, SyntheticWorldConfig
from trimtab.worlds.synthetic.oracle import SyntheticOracle

__all__ = ["SyntheticOracle", "SyntheticWorld", "SyntheticWorldConfig"]
