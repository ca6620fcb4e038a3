"""The chat service: turns, running replies and their limits. Knows nothing of sockets or HTTP."""

from tokenwire.chat.service import ChatService, StartChat, Started

__all__ = ["ChatService", "StartChat", "Started"]
