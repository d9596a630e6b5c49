"""Serving hotdog.mar with TorchServe: archive, server control, config, HTTP and gRPC clients (what a deployment needs; load and fault tools live in bench/)."""
