"""Infernet coordinator: the optional public HTTP API, bootstrap and receipt countersigning."""

__all__: list[str] = []
