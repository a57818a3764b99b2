"""Operations: the health probes' body."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str = Field(description="'ok', 'starting' while chips load, 'stopping' once shutdown began.")
    chips: dict[str, int] = Field(description="Chips by state (ready, corrupt): counts.")
