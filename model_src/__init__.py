# Starts the one-line reason the handler gives for refusing to load an archive (stale .pte, tampered
# weights, a bad model-config option); serving.server stops waiting for READY when a worker logs it.
LOAD_REFUSED = "hotdog model refused:"
