"""Reader studies: the store (SQLite or PostgreSQL), its rules and the session API."""

from .study import DESIGNS, MODALITIES, Override, RuleRefused, Study

__all__ = ["DESIGNS", "MODALITIES", "Override", "RuleRefused", "Study"]
