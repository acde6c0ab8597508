"""The APISIX adapter: an external-plugin runner serving the pipeline over APISIX's Unix socket.

`frames` reads and writes the wire (flatbuffers frames), `runner` turns calls into pipeline phases
on a Flow, `server` is the process APISIX starts (`python -m extproc.apisix`).
"""
