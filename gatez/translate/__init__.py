"""Provider translation, pure code (no I/O): one module per provider schema, each converting
requests, responses, stream chunks and error bodies to and from the shared model in `model`."""
