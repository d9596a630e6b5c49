"""Serving hotdog.mar with TorchServe: archive, server control, HTTP and gRPC clients, parity check."""
