"""uvicorn's HTTP/1.1 protocol (h11) with a time limit for clients that stall.

uvicorn waits forever on a client that opens a connection and sends nothing, sends part of a request's
headers or body and then nothing, or stops reading its response (its keep-alive timeout only runs
between requests; Kludex/uvicorn#1192). Each such connection counts towards `--max_connections`, so 64
of them made the server answer 503 to everybody. `stalled_client_protocol(timeout_s)` closes a
connection when
  - the client owes a request's headers (since the connection opened, or its last response was sent)
    and has not completed them within `timeout_s`: a deadline, so trickled header bytes are cut too;
  - the client owes the rest of a request's body and has sent none of it for `timeout_s` (an idle
    limit: a slow upload that moves goes on);
  - the response waits on the client (the write buffer is full) and the client has read none of it
    for `timeout_s` (an idle limit too: a slow download that moves goes on).
A request whose body is in and that the app is working on (queued or reconstructing) is never cut.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _StalledClientH11Protocol(H11Protocol):
  """H11Protocol plus one timer per connection; `timeout_s` is set by `stalled_client_protocol`."""

  timeout_s: float = 30.0
  _timer: asyncio.TimerHandle | None = None
  _unsent_at_arm = 0

  def _unsent(self) -> int:
    """Bytes written that the client has not taken: asyncio's buffer plus the kernel's send queue
    (which holds megabytes on loopback; without it a slow reader would look stalled)."""
    n = self.transport.get_write_buffer_size()
    sock = self.transport.get_extra_info("socket")
    if sock is not None and hasattr(termios, "TIOCOUTQ"):  # Linux's SIOCOUTQ
      try:
        n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
      except OSError:
        pass
    return n

  def _arm(self) -> None:
    self._disarm()
    self._unsent_at_arm = self._unsent()
    self._timer = self.loop.call_later(self.timeout_s, self._expired)

  def _disarm(self) -> None:
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None

  def _expired(self) -> None:
    self._timer = None
    if self.flow.write_paused:  # (closing included: a close, uvicorn's keep-alive one too, drains first)
      if self._unsent() < self._unsent_at_arm:
        self._arm()  # the client reads, slowly
        return
      # A reset: close() would wait for the unread response to drain, and a plain close of the socket
      # would leave the kernel sending its buffer (megabytes) to a client that does not read.
      sock = self.transport.get_extra_info("socket")
      if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
      self.transport.abort()
    elif self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
      self.transport.close()  # connection_lost tells a request still reading its body (ClientDisconnect)

  def connection_made(self, transport) -> None:  # pytype: disable=signature-mismatch
    super().connection_made(transport)
    self._arm()  # the first request's headers are due

  def data_received(self, data: bytes) -> None:
    was = self.conn.their_state
    super().data_received(data)
    now = self.conn.their_state
    if now is h11.SEND_BODY:
      self._arm()  # body bytes (or the headers just completed): the idle limit starts again
    elif (now is not h11.IDLE or was is not h11.IDLE) and not self.flow.write_paused:
      self._disarm()  # the request is in: the app has it (its response sets the timer again)
    # Still IDLE (headers incomplete): the deadline set when they became due stands.

  def on_response_complete(self) -> None:
    super().on_response_complete()
    if not self.transport.is_closing():
      self._arm()  # the next request's headers are due (and the response may still be draining)

  def pause_writing(self) -> None:
    super().pause_writing()
    if self._timer is None:
      self._arm()  # the client has `timeout_s` to read some of the response

  def resume_writing(self) -> None:
    super().resume_writing()
    if self.conn.their_state is h11.DONE:
      self._disarm()  # it reads; the app goes on writing (a full buffer sets the timer again)

  def connection_lost(self, exc) -> None:
    self._disarm()
    super().connection_lost(exc)


def stalled_client_protocol(timeout_s: float) -> type[H11Protocol]:
  """uvicorn's h11 protocol class that closes connections stalled for `timeout_s` (module doc); pass it
  as `uvicorn.Config(http=...)`."""
  if not timeout_s > 0:
    raise ValueError(f"stalled_client_protocol: timeout_s must be > 0, got {timeout_s}.")
  return type("StalledClientH11Protocol", (_StalledClientH11Protocol,), {"timeout_s": float(timeout_s)})
