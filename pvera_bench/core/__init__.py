"""The bottom layer: the one user-facing error type and the one atomic file writer, used by every layer above."""
