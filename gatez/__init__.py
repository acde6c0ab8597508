"""Gatez: shared pieces of the data plane and the control plane.

`gatez.v1` holds the generated API stubs (see `make proto`); the rest is hand-written.
"""
