"""node package."""

__all__: list[str] = []
