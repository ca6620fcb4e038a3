"""Who follows each conversation: the sockets joined to it (`chat:join`, or by starting a reply).

A joined follower becomes a follower of every reply that runs in the
conversation: of a reply already running when it joins (from offset 0), and
of each new one from its first event (`chat:user-message`). Membership is
this node's: a follower's `Sink` reaches a socket held here.
"""

from __future__ import annotations

from tokenwire.chat.writer import Sink

__all__ = ["Rooms"]


class Rooms:
    def __init__(self) -> None:
        self._members: dict[str, dict[str, Sink]] = {}
        self._joined: dict[str, set[str]] = {}

    def join(self, conversation_id: str, key: str, sink: Sink) -> None:
        self._members.setdefault(conversation_id, {})[key] = sink
        self._joined.setdefault(key, set()).add(conversation_id)

    def leave(self, conversation_id: str, key: str) -> bool:
        members = self._members.get(conversation_id)
        if members is None or members.pop(key, None) is None:
            return False
        if not members:
            del self._members[conversation_id]
        joined = self._joined[key]
        joined.discard(conversation_id)
        if not joined:
            del self._joined[key]
        return True

    def leave_all(self, key: str) -> None:
        for conversation_id in list(self._joined.get(key, ())):
            self.leave(conversation_id, key)

    def members(self, conversation_id: str) -> dict[str, Sink]:
        return dict(self._members.get(conversation_id, {}))

    def joined(self, key: str) -> set[str]:
        return set(self._joined.get(key, ()))

    def __len__(self) -> int:
        """How many (conversation, follower) memberships there are."""
        return sum(len(m) for m in self._members.values())
