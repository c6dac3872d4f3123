"""Account: a bank account as a goverse object.

Each account id is one object holding a balance in memory. Refusals
(overdraft, bad amount, unopened account) come back as a ``code`` and an
``error`` text in the response, never as exceptions, so a caller can tell
"the bank said no" from "the call failed".

A transfer is two steps on two objects, possibly on two nodes: the source
withdraws in place, then calls the destination's ``Deposit``. A call can
do its work and still fail for its caller (the answer is lost, or comes
after the deadline), so a refund on every failure could create money.
Instead each transfer gives its deposit an id, the ``operation_id``:

- the destination applies (or refuses) an id once and answers a repeat of
  it with its first answer, for as long as it remembers the id
  (``DEPOSIT_ID_WINDOW``);
- the source sends the deposit again, with the same id, until it gets an
  answer from the destination or its time runs out;
- the source puts the money back only when the deposit certainly did not
  happen: the destination refused it (it remembers that too, so no copy
  of the request still on its way can be applied later) or no attempt
  could have reached it;
- when no answer comes in time the transfer is *in doubt*: the money has
  left the source and may or may not be in the destination. The source
  records it (``Balance`` reports it) and ``Resolve`` asks again later,
  with the same id, and settles it.

So the sum of all balances never grows (as long as accounts remember
ids for as long as they should, see ``DEPOSIT_IDS_KEPT``), and it equals
the sum opened once no transfer is in doubt; until then it lies between
that sum and that sum minus the money in doubt.

NOTE: balances live only in the objects. Nothing is persisted, so an
account whose shard moves to another node (a node joining or leaving)
starts over unopened there; run transfers on a settled cluster.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from typing import NamedTuple

import gevent

import goverse
from goverse import callctx

from . import bank_pb2 as bank

#: The type name callers use with goverse.call_object.
ACCOUNT = "Account"

#: Seconds a transfer keeps sending its deposit at most, from the moment
#: it withdrew; the transfer's own deadline may end it sooner.
DEPOSIT_RETRY_HORIZON = 30.0

#: Seconds one attempt at a deposit may take before it counts as unanswered.
DEPOSIT_ATTEMPT_TIMEOUT = 5.0

#: Pause after an unanswered attempt, doubling up to the second value.
DEPOSIT_RETRY_PAUSE = (0.05, 1.0)

#: Seconds kept back from a call's deadline to answer its caller in time.
ANSWER_MARGIN = 0.5

#: Seconds an account remembers the answer it gave to a deposit id.
#:
#: A repeat of an id is recognised only while the id is remembered, so the
#: window must outlast every attempt that can carry the id. It does: a
#: transfer sends its deposit for DEPOSIT_RETRY_HORIZON seconds at most,
#: Resolve for RESOLVE_HORIZON seconds after the transfer began, and an
#: attempt that starts running after its deadline does nothing (EXPIRED),
#: so no attempt runs later than those horizons plus the time it spent in
#: transit. The gap between RESOLVE_HORIZON and the window is that margin.
DEPOSIT_ID_WINDOW = 120.0

#: Seconds after a transfer began during which Resolve may send its deposit
#: again; later, the destination may have forgotten the id, and a repeat
#: could be applied twice, so the transfer stays in doubt for good.
RESOLVE_HORIZON = DEPOSIT_ID_WINDOW - 30.0

#: Most deposit ids one account remembers. This bounds memory (about 200
#: bytes an id) for an account that takes more than this many deposits
#: within DEPOSIT_ID_WINDOW: it forgets its oldest ids early, and a late
#: repeat of a forgotten id would be applied a second time. Each early
#: forgetting is counted and logged.
DEPOSIT_IDS_KEPT = 50_000

#: Errors raised before a deposit could run on its destination: the id is
#: invalid, or names an object of another type or a node outside the
#: cluster. Every other error leaves open whether the deposit ran.
_NOT_RUN = (goverse.InvalidObjectId, goverse.NoRoute, goverse.UnknownObjectType,
            goverse.UnknownMethod, goverse.ObjectTypeMismatch)

#: Transfer ids are this process's random prefix and a number: unique in
#: the cluster without a system call for each transfer. A forked child
#: draws a prefix of its own.
_transfer_id_prefix = ""
_transfer_numbers = itertools.count(1)


def _new_transfer_id_prefix() -> None:
    global _transfer_id_prefix, _transfer_numbers
    _transfer_id_prefix = os.urandom(12).hex()
    _transfer_numbers = itertools.count(1)


_new_transfer_id_prefix()
os.register_at_fork(after_in_child=_new_transfer_id_prefix)

# Outcomes of sending a deposit.
_DEPOSITED = "deposited"
_NOT_DEPOSITED = "not deposited"
_UNKNOWN = "unknown"


class InDoubt(NamedTuple):
    """A transfer whose deposit got no answer: its money is in no balance."""

    to_account: str
    amount: int
    began: float  # time.monotonic() when the transfer withdrew the money


@goverse.register(name=ACCOUNT)
class Account(goverse.BaseObject):
    """One account: a balance that is never negative."""

    def __init__(self) -> None:
        self.opened = False
        self.balance = 0
        # Deposit ids answered, with the answer (code, error), and the same
        # ids in the order they were answered, with the time, for forgetting.
        self._answered: dict[str, tuple[int, str]] = {}
        self._answered_order: deque[tuple[float, str]] = deque()
        self.ids_forgotten_early = 0
        # Transfers out of this account in doubt, by transfer id, and those
        # a Resolve call is asking about right now.
        self.in_doubt: dict[str, InDoubt] = {}
        self._resolving: set[str] = set()

    @goverse.method
    def Open(self, request: bank.OpenRequest) -> bank.OpenResponse:
        """Open with an initial balance; opening again changes nothing."""
        if self.opened:
            return bank.OpenResponse(balance=self.balance, created=False)
        if request.initial_balance < 0:
            return bank.OpenResponse(code=bank.INVALID_AMOUNT, error=(
                "initial balance must not be negative, got %d" % request.initial_balance))
        self.opened = True
        self.balance = request.initial_balance
        return bank.OpenResponse(balance=self.balance, created=True)

    @goverse.method
    def Deposit(self, request: bank.DepositRequest) -> bank.DepositResponse:
        """Add ``amount``; once per ``operation_id`` when one is given."""
        operation_id = request.operation_id
        if operation_id:
            answered = self._answered.get(operation_id)
            if answered is not None:
                return bank.DepositResponse(balance=self.balance, code=answered[0],
                                            error=answered[1], duplicate=True)
            if callctx.remaining(1.0) <= 0:
                # Its sender has given up on this attempt and may send the
                # id again; running it now would stretch the time in which
                # the id must be remembered past any bound.
                return bank.DepositResponse(balance=self.balance, code=bank.EXPIRED, error=(
                    "deposit %s into %s arrived after its deadline; nothing done" % (
                        operation_id, self.id)))
        refusal = self._refusal(request.amount)
        if refusal is None:
            self.balance += request.amount
            code, error = bank.OK, ""
        else:
            code, error = refusal
        if operation_id:
            self._remember(operation_id, code, error)
        return bank.DepositResponse(balance=self.balance, code=code, error=error)

    @goverse.method
    def Withdraw(self, request: bank.WithdrawRequest) -> bank.WithdrawResponse:
        code, error = self._take(request.amount)
        return bank.WithdrawResponse(balance=self.balance, code=code, error=error)

    @goverse.method(interleave=True)
    def Balance(self, request: bank.BalanceRequest) -> bank.BalanceResponse:
        return bank.BalanceResponse(balance=self.balance, open=self.opened,
                                    in_doubt=sum(t.amount for t in self.in_doubt.values()),
                                    in_doubt_transfers=len(self.in_doubt))

    # NOTE: Transfer runs outside the account's turn (interleave). Holding
    # the turn while waiting for the destination would let two opposite
    # transfers (A to B and B to A) each wait for the other's turn until
    # their deadline. It stays safe because each change of the balance
    # below is made without yielding between its check and its update, and
    # greenlets only switch when one yields.
    @goverse.method(interleave=True)
    def Transfer(self, request: bank.TransferRequest) -> bank.TransferResponse:
        """Move ``amount`` from this account to ``to_account`` (see the module notes)."""
        if request.to_account == self.id:
            return bank.TransferResponse(balance=self.balance, code=bank.SAME_ACCOUNT,
                                         error="account %s cannot transfer to itself" % self.id)
        code, error = self._take(request.amount)
        if code != bank.OK:
            return bank.TransferResponse(balance=self.balance, code=code, error=error)

        transfer_id = "%s-%d" % (_transfer_id_prefix, next(_transfer_numbers))
        began = time.monotonic()
        until = began + min(DEPOSIT_RETRY_HORIZON,
                            callctx.remaining(DEPOSIT_RETRY_HORIZON) - ANSWER_MARGIN)
        outcome, why = self._deposit_elsewhere(request.to_account, request.amount,
                                               transfer_id, until, maybe_ran=False)
        if outcome is _DEPOSITED:
            return bank.TransferResponse(balance=self.balance, transfer_id=transfer_id)
        if outcome is _NOT_DEPOSITED:
            self.balance += request.amount
            return bank.TransferResponse(
                balance=self.balance, code=bank.DEPOSIT_FAILED, transfer_id=transfer_id,
                error="deposit of %d into %s failed, refunded to %s: %s" % (
                    request.amount, request.to_account, self.id, why))
        self.in_doubt[transfer_id] = InDoubt(request.to_account, request.amount, began)
        self.logger.warning("transfer %s of %d from %s to %s is in doubt: %s", transfer_id,
                            request.amount, self.id, request.to_account, why)
        return bank.TransferResponse(
            balance=self.balance, code=bank.IN_DOUBT, transfer_id=transfer_id,
            error="deposit of %d into %s got no answer in time; %s holds it as in doubt "
                  "(transfer %s) until Resolve settles it: %s" % (
                      request.amount, request.to_account, self.id, transfer_id, why))

    @goverse.method(interleave=True)
    def Resolve(self, request: bank.ResolveRequest) -> bank.ResolveResponse:
        """Send the deposits of transfers in doubt again, with their ids; settle them.

        A deposit the destination takes (now or before) settles the
        transfer; one it refuses brings the money back here. Transfers that
        still get no answer, or are older than RESOLVE_HORIZON, stay in
        doubt.
        """
        deposited = refunded = 0
        for transfer_id in list(self.in_doubt):
            entry = self.in_doubt.get(transfer_id)
            if entry is None or transfer_id in self._resolving:
                continue  # settled meanwhile, or another Resolve is asking
            until = min(entry.began + RESOLVE_HORIZON,
                        time.monotonic() + min(DEPOSIT_RETRY_HORIZON, callctx.remaining(
                            DEPOSIT_RETRY_HORIZON) - ANSWER_MARGIN))
            self._resolving.add(transfer_id)
            try:
                outcome, why = self._deposit_elsewhere(entry.to_account, entry.amount,
                                                       transfer_id, until, maybe_ran=True)
            finally:
                self._resolving.discard(transfer_id)
            if outcome is _UNKNOWN:
                continue
            del self.in_doubt[transfer_id]
            if outcome is _DEPOSITED:
                deposited += 1
            else:
                self.balance += entry.amount
                refunded += 1
            self.logger.info("transfer %s of %d from %s to %s settled: %s", transfer_id,
                             entry.amount, self.id, entry.to_account, why or outcome)
        return bank.ResolveResponse(
            balance=self.balance, deposited=deposited, refunded=refunded,
            in_doubt=sum(t.amount for t in self.in_doubt.values()),
            in_doubt_transfers=len(self.in_doubt))

    def _deposit_elsewhere(self, account_id: str, amount: int, operation_id: str,
                           until: float, maybe_ran: bool) -> tuple[str, str]:
        """Send a deposit until it is answered or ``until`` passes.

        Returns the outcome and why: _DEPOSITED, _NOT_DEPOSITED (the
        destination refused the id, or no attempt can have run), or
        _UNKNOWN. ``maybe_ran`` says an earlier attempt may have run.
        """
        request = bank.DepositRequest(amount=amount, operation_id=operation_id)
        pause, longest = DEPOSIT_RETRY_PAUSE
        why = "no time left before the deadline to send it"
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return (_UNKNOWN if maybe_ran else _NOT_DEPOSITED), why
            try:
                reply = self._send_deposit(account_id, request,
                                           min(DEPOSIT_ATTEMPT_TIMEOUT, left))
            except _NOT_RUN as exc:
                why = "%s: %s" % (type(exc).__name__, exc)
                if not maybe_ran:
                    return _NOT_DEPOSITED, why
            except goverse.GoverseError as exc:
                maybe_ran = True
                why = "%s: %s" % (type(exc).__name__, exc)
                self.logger.info("deposit %s of %d into %s unanswered, sending it again: %s",
                                 operation_id, amount, account_id, why)
            else:
                if reply.code == bank.OK:
                    return _DEPOSITED, ""
                if reply.code != bank.EXPIRED:
                    # A refusal is remembered with the id like a deposit:
                    # no copy of the request still on its way will run.
                    return _NOT_DEPOSITED, reply.error
                why = reply.error
            gevent.sleep(min(pause, max(0.0, until - time.monotonic())))
            pause = min(2 * pause, longest)

    def _send_deposit(self, account_id: str, request: bank.DepositRequest,
                      timeout: float) -> bank.DepositResponse:
        """One attempt at a deposit (tests replace it to lose answers)."""
        return goverse.call_object(ACCOUNT, account_id, "Deposit", request, timeout=timeout)

    def _remember(self, operation_id: str, code: int, error: str) -> None:
        """Remember the answer to a deposit id; forget ids past the window."""
        now = time.monotonic()
        oldest_kept = now - DEPOSIT_ID_WINDOW
        order, answered = self._answered_order, self._answered
        while order and (order[0][0] < oldest_kept or len(answered) >= DEPOSIT_IDS_KEPT):
            at, forgotten = order.popleft()
            del answered[forgotten]
            if at >= oldest_kept:
                self.ids_forgotten_early += 1
                if self.ids_forgotten_early == 1 or self.ids_forgotten_early % 10_000 == 0:
                    self.logger.warning(
                        "%s took more than %d deposits in %.0fs and forgets ids early "
                        "(%d so far): a late repeat of one would be applied again",
                        self.id, DEPOSIT_IDS_KEPT, DEPOSIT_ID_WINDOW, self.ids_forgotten_early)
        answered[operation_id] = (code, error)
        order.append((now, operation_id))

    def _take(self, amount: int) -> tuple[int, str]:
        """Withdraw ``amount`` if the account can pay it; (code, error)."""
        refusal = self._refusal(amount)
        if refusal is not None:
            return refusal
        if amount > self.balance:
            return bank.INSUFFICIENT_FUNDS, "account %s holds %d, cannot pay %d" % (
                self.id, self.balance, amount)
        self.balance -= amount
        return bank.OK, ""

    def _refusal(self, amount: int) -> tuple[int, str] | None:
        """Why an amount cannot move in or out of this account, if it cannot."""
        if not self.opened:
            return bank.NOT_OPEN, "account %s is not open" % self.id
        if amount <= 0:
            return bank.INVALID_AMOUNT, "amount must be positive, got %d" % amount
        return None
