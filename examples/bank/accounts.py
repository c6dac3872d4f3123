"""Account: a bank account as a goverse object.

Each account id is one object holding a balance in memory. Refusals
(overdraft, bad amount, unopened account) come back as a ``code`` and an
``error`` text in the response, never as exceptions, so a caller can tell
"the bank said no" from "the call failed".

A transfer is two steps on two objects, possibly on two nodes: the source
withdraws in place, then calls the destination's ``Deposit``; when the
deposit does not happen, the source puts the money back. The sum of all
balances therefore stays constant while transfers run.

NOTE: balances live only in the objects. Nothing is persisted, so an
account whose shard moves to another node (a node joining or leaving)
starts over unopened there; run transfers on a settled cluster.
"""

from __future__ import annotations

import goverse

from . import bank_pb2 as bank

#: The type name callers use with goverse.call_object.
ACCOUNT = "Account"


@goverse.register(name=ACCOUNT)
class Account(goverse.BaseObject):
    """One account: a balance that is never negative."""

    def __init__(self) -> None:
        self.opened = False
        self.balance = 0

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
        refusal = self._refusal(request.amount)
        if refusal is not None:
            return bank.DepositResponse(balance=self.balance, code=refusal[0],
                                        error=refusal[1])
        self.balance += request.amount
        return bank.DepositResponse(balance=self.balance)

    @goverse.method
    def Withdraw(self, request: bank.WithdrawRequest) -> bank.WithdrawResponse:
        code, error = self._take(request.amount)
        return bank.WithdrawResponse(balance=self.balance, code=code, error=error)

    @goverse.method(interleave=True)
    def Balance(self, request: bank.BalanceRequest) -> bank.BalanceResponse:
        return bank.BalanceResponse(balance=self.balance, open=self.opened)

    # NOTE: Transfer runs outside the account's turn (interleave). Holding
    # the turn while waiting for the destination would let two opposite
    # transfers (A to B and B to A) each wait for the other's turn until
    # their deadline. It stays safe because each change of the balance
    # below is made without yielding between its check and its update, and
    # greenlets only switch when one yields.
    @goverse.method(interleave=True)
    def Transfer(self, request: bank.TransferRequest) -> bank.TransferResponse:
        """Move ``amount`` from this account to ``to_account``."""
        if request.to_account == self.id:
            return bank.TransferResponse(balance=self.balance, code=bank.SAME_ACCOUNT,
                                         error="account %s cannot transfer to itself" % self.id)
        code, error = self._take(request.amount)
        if code != bank.OK:
            return bank.TransferResponse(balance=self.balance, code=code, error=error)

        failure = self._deposit_elsewhere(request.to_account, request.amount)
        if failure is None:
            return bank.TransferResponse(balance=self.balance)

        self.balance += request.amount
        return bank.TransferResponse(balance=self.balance, code=bank.DEPOSIT_FAILED, error=(
            "deposit of %d into %s failed, refunded to %s: %s" % (
                request.amount, request.to_account, self.id, failure)))

    def _deposit_elsewhere(self, account_id: str, amount: int) -> str | None:
        """Deposit into another account; None on success, else why not.

        TODO: a deposit whose answer is lost (a timeout after the
        destination applied it) is refunded as well, which creates money.
        Give each deposit an id the destination remembers, and on a timeout
        ask the destination whether it applied that id before refunding.
        """
        try:
            reply = goverse.call_object(ACCOUNT, account_id, "Deposit",
                                        bank.DepositRequest(amount=amount))
        except goverse.GoverseError as exc:
            self.logger.warning("deposit of %d into %s failed: %s", amount, account_id, exc)
            return "%s: %s" % (type(exc).__name__, exc)
        if reply.code != bank.OK:
            return reply.error
        return None

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
