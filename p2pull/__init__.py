"""p2pull: a node-local peer-to-peer layer distribution agent (a containerd registry mirror)."""

__version__ = "0.1.0"
