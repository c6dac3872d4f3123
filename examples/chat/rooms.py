"""The chat sample's object type: a room that clients join through a gate.

A ``ChatRoom`` is created on first use, like any goverse object. Its
members are gate clients, known by the client id the gate attached to
their calls (``goverse.client_id()``); a message sent to the room is
pushed to every member with one ``push_message`` call, which travels as one
envelope per gate. The room keeps its last messages so that a newcomer
sees the conversation it joins.

Start nodes with ``--objects examples.chat.rooms``.
"""

from __future__ import annotations

from collections import deque

import goverse

from . import chat_pb2 as chat

#: Messages a room remembers for people who join later.
HISTORY = 50

#: Longest message text and member name accepted, in characters.
MAX_TEXT = 2000
MAX_NAME = 64


@goverse.register
class ChatRoom(goverse.BaseObject):
    """One chat room: its members by client id, and its recent messages."""

    def __init__(self) -> None:
        self.members: dict[str, str] = {}
        self.history: deque[chat.ChatMessage] = deque(maxlen=HISTORY)
        self.seq = 0

    @goverse.method
    def Join(self, request: chat.JoinRequest) -> chat.JoinResponse:
        client = _calling_client("Join")
        name = request.name.strip()[:MAX_NAME] or "anonymous"
        self.members[client] = name
        self.logger.info("%s joined as %r (%d members)", client, name, len(self.members))
        return chat.JoinResponse(history=list(self.history), members=len(self.members))

    @goverse.method
    def Leave(self, request: chat.LeaveRequest) -> chat.LeaveResponse:
        client = _calling_client("Leave")
        if self.members.pop(client, None) is not None:
            self.logger.info("%s left (%d members)", client, len(self.members))
        return chat.LeaveResponse(members=len(self.members))

    @goverse.method(interleave=True)
    def Members(self, request: chat.MembersRequest) -> chat.MembersResponse:
        return chat.MembersResponse(names=sorted(self.members.values()))

    @goverse.method
    def Send(self, request: chat.SendRequest) -> chat.SendResponse:
        client = _calling_client("Send")
        name = self.members.get(client)
        if name is None:
            raise PermissionError("client %s has not joined room %s" % (client, self.id))
        self.seq += 1
        message = chat.ChatMessage(room=self.id, name=name, text=request.text[:MAX_TEXT],
                                   seq=self.seq)
        self.history.append(message)
        delivered = goverse.push_message(list(self.members), message)
        return chat.SendResponse(seq=self.seq, delivered=delivered)


def _calling_client(method: str) -> str:
    client = goverse.client_id()
    if not client:
        raise PermissionError("ChatRoom.%s must be called by a gate client "
                              "(no client id in the call)" % (method,))
    return client
