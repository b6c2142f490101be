"""mesh package."""

__all__: list[str] = []
