"""Test helpers that ship with the library: a fault-injecting OCI registry for tests and demos."""

from p2pull.testing.origin import Faults, RecordedRequest, TestOrigin, tar_layer

__all__ = ["Faults", "RecordedRequest", "TestOrigin", "tar_layer"]
