"""The bank example: Account semantics in-process, and the demo end to end."""

import os
import random
import subprocess
import sys

import gevent
import gevent.pool

from examples.bank import accounts  # noqa: F401  (registers Account)
from examples.bank import bank_pb2 as bank
from goverse.testing import ROOT, wait_until


def _open(node, account, balance):
    return node.call_object("Account", account, "Open",
                            bank.OpenRequest(initial_balance=balance))


def _balance(node, account):
    return node.call_object("Account", account, "Balance", bank.BalanceRequest()).balance


def _transfer(node, source, destination, amount):
    return node.call_object("Account", source, "Transfer",
                            bank.TransferRequest(to_account=destination, amount=amount))


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


def test_bank_demo_conserves_money():
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "examples.bank.run", "--nodes", "2", "--accounts", "100",
         "--transfers", "500", "--concurrency", "16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total balance conserved: 100000 == 100000" in result.stdout
    assert ", 0 failed" in result.stdout
