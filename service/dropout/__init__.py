"""Dropout sampling: the real torch.nn dropout modules over HTTP (``POST /v1/dropout``)."""
