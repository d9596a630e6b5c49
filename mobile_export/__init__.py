"""ExecuTorch export of the shipped model for iOS: .pte files, their metadata, parity checks and a benchmark."""
