"""The parsed configuration: frozen values, built once by ``config.parse``
from the Corefile. Runtime code reads only these; it never sees Corefile
text. A server block keeps each directive's options (the frozen value its
plugin's ``setup`` made, see ``plugins/``) under the directive's name, in
the registry's chain order; nothing here knows any one plugin.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerBlock:
    zones: tuple[str, ...]      # lower-case, absolute ("cluster.local.")
    port: int
    source: str                 # "file:line" of the block, for messages
    plugins: tuple[tuple[str, object], ...] = ()  # (directive, options), in chain order

    def option(self, name: str, default=None):
        """The options of directive ``name`` in this block (``default``: absent)."""
        for directive, options in self.plugins:
            if directive == name:
                return options
        return default

    def has(self, name: str) -> bool:
        return any(directive == name for directive, _ in self.plugins)

    @property
    def binds(self) -> tuple[str, ...]:
        """``bind``'s addresses; empty: all addresses."""
        return self.option("bind", ())


@dataclass(frozen=True)
class Config:
    blocks: tuple[ServerBlock, ...]
    source: str = "Corefile"
    listeners: tuple[tuple[str, int], ...] = field(default=())  # (address, port), derived
