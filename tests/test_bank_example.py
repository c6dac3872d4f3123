"""The bank example: Account semantics in-process, and the demo end to end."""

import os
import random
import subprocess
import sys

import gevent
import gevent.pool
import pytest

import goverse
from examples.bank import accounts  # noqa: F401  (registers Account)
from examples.bank import bank_pb2 as bank
from examples.bank import run as bank_run
from goverse.testing import ROOT, wait_until


def _open(node, account, balance):
    return node.call_object("Account", account, "Open",
                            bank.OpenRequest(initial_balance=balance))


def _balance(node, account):
    return node.call_object("Account", account, "Balance", bank.BalanceRequest()).balance


def _transfer(node, source, destination, amount, timeout=None):
    return node.call_object("Account", source, "Transfer",
                            bank.TransferRequest(to_account=destination, amount=amount),
                            timeout=timeout)


def _deposit(node, account, amount, operation_id, timeout=None):
    return node.call_object("Account", account, "Deposit",
                            bank.DepositRequest(amount=amount, operation_id=operation_id),
                            timeout=timeout)


def _in_doubt(node, account):
    reply = node.call_object("Account", account, "Balance", bank.BalanceRequest())
    return reply.in_doubt, reply.in_doubt_transfers


def _resolve(node, account):
    return node.call_object("Account", account, "Resolve", bank.ResolveRequest())


def _two_accounts_on_two_nodes(make_node):
    """A node, and "alice" (100) on it and "bob" (50) on a second node."""
    node, other = make_node(), make_node()
    wait_until(lambda: len(node.cluster.state.nodes) == 2, 30)
    alice, bob = "%s/alice" % node.address, "%s/bob" % other.address
    _open(node, alice, 100)
    _open(node, bob, 50)
    return node, alice, bob


class LostAnswers:
    """Stands in for Account._send_deposit: loses deposit answers on purpose.

    ``plan`` holds one entry per attempt, used in order (the last one
    repeats): "lose" lets the deposit run and raises CallTimeout as if its
    answer never came back; "drop" raises CallTimeout without sending it;
    "pass" sends it normally.
    """

    def __init__(self, monkeypatch, *plan):
        self.plan = list(plan)
        self.attempts = []  # (what was done, the destination's reply or None)
        self.send = accounts.Account._send_deposit
        monkeypatch.setattr(accounts.Account, "_send_deposit",
                            lambda account, *args: self._attempt(account, *args))

    def _attempt(self, account, account_id, request, timeout):
        what = self.plan[min(len(self.attempts), len(self.plan) - 1)]
        reply = None if what == "drop" else self.send(account, account_id, request, timeout)
        self.attempts.append((what, reply, request.operation_id))
        if what == "pass":
            return reply
        raise goverse.CallTimeout("deposit into %s: answer lost on purpose" % account_id)

    @property
    def operation_ids(self):
        return {operation_id for _, _, operation_id in self.attempts}


def test_account_open_is_idempotent(make_node):
    node = make_node()
    assert _open(node, "alice", 100).created
    again = _open(node, "alice", 999)
    assert not again.created and again.balance == 100


def test_account_withdraw_refuses_overdraft(make_node):
    node = make_node()
    _open(node, "alice", 100)
    reply = node.call_object("Account", "alice", "Withdraw",
                             bank.WithdrawRequest(amount=101))
    assert reply.code == bank.INSUFFICIENT_FUNDS
    assert "cannot pay 101" in reply.error
    assert _balance(node, "alice") == 100


def test_account_transfer_moves_money(make_node):
    node = make_node()
    _open(node, "alice", 100)
    _open(node, "bob", 50)
    reply = _transfer(node, "alice", "bob", 40)
    assert reply.code == bank.OK and reply.balance == 60
    assert (_balance(node, "alice"), _balance(node, "bob")) == (60, 90)


def test_account_transfer_refuses_overdraft_and_conserves(make_node):
    node = make_node()
    _open(node, "alice", 100)
    _open(node, "bob", 50)
    reply = _transfer(node, "alice", "bob", 150)
    assert reply.code == bank.INSUFFICIENT_FUNDS and reply.error
    assert (_balance(node, "alice"), _balance(node, "bob")) == (100, 50)


def test_account_transfer_refunds_failed_deposit(make_node):
    node = make_node()
    _open(node, "alice", 100)
    reply = _transfer(node, "alice", "nobody", 30)
    assert reply.code == bank.DEPOSIT_FAILED
    assert "refunded" in reply.error and "not open" in reply.error
    assert _balance(node, "alice") == 100


def test_account_transfer_refuses_bad_requests(make_node):
    node = make_node()
    _open(node, "alice", 100)
    assert _transfer(node, "alice", "alice", 10).code == bank.SAME_ACCOUNT
    assert _transfer(node, "alice", "bob", 0).code == bank.INVALID_AMOUNT
    assert _transfer(node, "alice", "bob", -5).code == bank.INVALID_AMOUNT
    assert _balance(node, "alice") == 100


def test_account_crossing_transfers_conserve_money(make_node):
    # Transfers crossing each other (A to B while B pays A) between accounts
    # on two nodes must neither wait for each other until their deadline
    # nor lose money. Ids "<node address>/<name>" pin accounts to nodes.
    node, other = make_node(), make_node()
    wait_until(lambda: len(node.cluster.state.nodes) == 2, 30)
    names = ["%s/acct-%d" % (owner.address, i)
             for owner in (node, other) for i in range(3)]
    for name in names:
        _open(node, name, 1000)
    rng = random.Random(7)
    pairs = [rng.sample(names, 2) for _ in range(300)]

    def pay(source, destination):
        return node.call_object("Account", source, "Transfer",
                                bank.TransferRequest(to_account=destination, amount=3),
                                timeout=5)

    pool = gevent.pool.Pool(32)
    replies = list(pool.imap_unordered(lambda pair: pay(*pair), pairs))
    assert [r.error for r in replies if r.code != bank.OK] == []
    assert sum(_balance(node, name) for name in names) == 6000


def test_account_deposit_with_same_id_is_applied_once(make_node):
    node, alice, bob = _two_accounts_on_two_nodes(make_node)
    # Twice over the wire to the other node, and twice on the node itself.
    for account, balance in ((bob, 50), (alice, 100)):
        first = _deposit(node, account, 30, "t-1")
        again = _deposit(node, account, 30, "t-1")
        assert (first.code, first.duplicate, first.balance) == (bank.OK, False, balance + 30)
        assert (again.code, again.duplicate, again.balance) == (bank.OK, True, balance + 30)
        assert _balance(node, account) == balance + 30
        # Another id is another deposit; no id at all, a plain one.
        assert _deposit(node, account, 5, "t-2").balance == balance + 35
        assert _deposit(node, account, 5, "").balance == balance + 40
        assert _deposit(node, account, 5, "").balance == balance + 45


def test_account_deposit_remembers_a_refusal(make_node):
    # A deposit refused because the account was not open stays refused,
    # or a copy of it arriving after the opening would add money that its
    # source, told "no", has already taken back.
    node = make_node()
    refused = _deposit(node, "carol", 30, "t-1")
    assert refused.code == bank.NOT_OPEN and not refused.duplicate
    _open(node, "carol", 10)
    again = _deposit(node, "carol", 30, "t-1")
    assert (again.code, again.duplicate) == (bank.NOT_OPEN, True)
    assert _balance(node, "carol") == 10
    assert _deposit(node, "carol", 30, "t-2").balance == 40


def test_account_deposit_after_its_deadline_does_nothing(make_node):
    node = make_node()
    _open(node, "carol", 10)
    late = _deposit(node, "carol", 30, "t-1", timeout=1e-9)
    assert late.code == bank.EXPIRED and "after its deadline" in late.error
    assert _balance(node, "carol") == 10
    # Not remembered either: the sender's next attempt is applied.
    assert _deposit(node, "carol", 30, "t-1").balance == 40


def test_account_forgets_deposit_ids_beyond_its_bound(make_node, monkeypatch):
    # The bound is what the comment on DEPOSIT_IDS_KEPT says: an id pushed
    # out by newer ones is applied again when it comes back.
    monkeypatch.setattr(accounts, "DEPOSIT_IDS_KEPT", 2)
    node = make_node()
    _open(node, "carol", 0)
    for operation_id in ("t-1", "t-2", "t-3"):
        _deposit(node, "carol", 1, operation_id)
    assert _deposit(node, "carol", 1, "t-3").duplicate
    assert not _deposit(node, "carol", 1, "t-1").duplicate
    assert _balance(node, "carol") == 4
    assert node.host.objects["carol"].ids_forgotten_early == 2


def test_account_transfer_lost_deposit_answer_conserves_money(make_node, monkeypatch):
    # The deposit runs, its answer is lost; the transfer sends it again
    # with the same id, and the destination applies it once.
    node, alice, bob = _two_accounts_on_two_nodes(make_node)
    lost = LostAnswers(monkeypatch, "lose", "pass")
    reply = _transfer(node, alice, bob, 30)
    assert reply.code == bank.OK, reply.error
    assert [what for what, _, _ in lost.attempts] == ["lose", "pass"]
    assert lost.attempts[1][1].duplicate
    assert lost.operation_ids == {reply.transfer_id}
    assert (_balance(node, alice), _balance(node, bob)) == (70, 80)
    assert _in_doubt(node, alice) == (0, 0)


def test_account_transfer_refunds_a_refusal_after_a_lost_attempt(make_node, monkeypatch):
    # The first attempt never arrives; the second is refused (not open), and
    # since the destination remembers its refusal, the refund is safe.
    node = make_node()
    _open(node, "alice", 100)
    lost = LostAnswers(monkeypatch, "drop", "pass")
    reply = _transfer(node, "alice", "nobody", 30)
    assert reply.code == bank.DEPOSIT_FAILED and "not open" in reply.error
    assert len(lost.attempts) == 2
    assert _balance(node, "alice") == 100


@pytest.mark.parametrize("how", ["lose", "drop"])
def test_account_transfer_in_doubt_until_resolved(make_node, monkeypatch, how):
    # No answer before the deadline: ran ("lose") or never arrived ("drop"),
    # the source cannot tell, so it neither refunds nor counts the money
    # as deposited: it holds it in doubt, and Resolve settles it once.
    node, alice, bob = _two_accounts_on_two_nodes(make_node)
    lost = LostAnswers(monkeypatch, how)
    reply = _transfer(node, alice, bob, 30, timeout=2.5)
    assert reply.code == bank.IN_DOUBT, reply.error
    assert reply.transfer_id in reply.error and reply.balance == 70
    assert len(lost.attempts) >= 2 and lost.operation_ids == {reply.transfer_id}
    assert _in_doubt(node, alice) == (30, 1)
    landed = 30 if how == "lose" else 0
    assert _balance(node, bob) == 50 + landed
    assert _balance(node, alice) + _balance(node, bob) + 30 - landed == 150

    monkeypatch.undo()  # answers come back again
    settled = _resolve(node, alice)
    assert (settled.deposited, settled.refunded, settled.in_doubt_transfers) == (1, 0, 0)
    assert _in_doubt(node, alice) == (0, 0)
    assert (_balance(node, alice), _balance(node, bob)) == (70, 80)
    assert _resolve(node, alice).deposited == 0  # nothing left to settle


def test_account_resolve_leaves_old_transfers_in_doubt(make_node, monkeypatch):
    # Past RESOLVE_HORIZON the destination may have forgotten the id, so
    # sending it again could deposit twice: the transfer stays in doubt.
    node, alice, bob = _two_accounts_on_two_nodes(make_node)
    lost = LostAnswers(monkeypatch, "drop")
    assert _transfer(node, alice, bob, 30, timeout=2.5).code == bank.IN_DOUBT
    sent = len(lost.attempts)
    monkeypatch.setattr(accounts, "RESOLVE_HORIZON", 0.0)
    still = _resolve(node, alice)
    assert (still.deposited, still.refunded) == (0, 0)
    assert (still.in_doubt, still.in_doubt_transfers) == (30, 1)
    assert len(lost.attempts) == sent
    assert _balance(node, bob) == 50


def test_bank_demo_counts_money_in_doubt(capsys):
    # The demo's check says "conserved" only when it can prove it.
    def check(total, in_doubt=0, transfers=0, settled=0):
        ledger = bank_run.Ledger(total=total, in_doubt=in_doubt,
                                 in_doubt_transfers=transfers, settled=settled)
        return bank_run.print_conservation(ledger, 1000)

    assert check(1000, settled=2)
    assert "2 transfers settled by Resolve" in capsys.readouterr().out
    assert not check(970, in_doubt=30, transfers=1)
    assert "NOT VERIFIED: 970, with 30 more in doubt in 1 transfers" in capsys.readouterr().out
    assert not check(1000, in_doubt=30, transfers=1)  # it landed, or it did not
    assert "NOT VERIFIED" in capsys.readouterr().out
    assert not check(960, in_doubt=30, transfers=1)
    assert "NOT CONSERVED: 960 != 1000" in capsys.readouterr().out
    assert not check(1001)
    assert "NOT CONSERVED" in capsys.readouterr().out


def test_bank_demo_settles_transfers_in_doubt_before_counting(make_node, monkeypatch,
                                                             capsys):
    make_node()
    bank_run.open_accounts(3, 1000, concurrency=2)
    source, destination = bank_run.account_id(0), bank_run.account_id(1)
    for how in ("lose", "drop"):
        LostAnswers(monkeypatch, how)
        reply = goverse.call_object("Account", source, "Transfer", bank.TransferRequest(
            to_account=destination, amount=30), timeout=2.5)
        assert reply.code == bank.IN_DOUBT, reply.error
    # While the destination cannot be asked in time, the check cannot pass.
    monkeypatch.setattr(accounts, "RESOLVE_HORIZON", 0.0)
    ledger = bank_run.count_money(3, concurrency=2)
    assert (ledger.total, ledger.in_doubt, ledger.in_doubt_transfers) == (2970, 60, 2)
    assert not bank_run.print_conservation(ledger, 3000)
    assert "NOT VERIFIED: 2970, with 60 more in doubt" in capsys.readouterr().out

    monkeypatch.undo()
    ledger = bank_run.count_money(3, concurrency=2)
    assert (ledger.total, ledger.in_doubt_transfers, ledger.settled) == (3000, 0, 2)
    assert bank_run.print_conservation(ledger, 3000)
    assert "total balance conserved: 3000 == 3000" in capsys.readouterr().out


def test_bank_demo_conserves_money():
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "examples.bank.run", "--nodes", "2", "--accounts", "100",
         "--transfers", "500", "--concurrency", "16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total balance conserved: 100000 == 100000" in result.stdout
    assert ", 0 failed" in result.stdout
