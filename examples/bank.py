"""The replicated bank account: the same withdrawals approved on every server.

An account opens with $1000. Two clients, talking to two different servers at the same moment,
withdraw $800 and $600. Each server alone would approve its own withdrawal and the account
would go negative. With replog the withdrawals go through the replicated log: the log puts them
in one order, every server applies them in that order, and so every server approves the first
and rejects the second: the same decision everywhere, whoever asked where.

Run three servers of it (each in its own terminal, or let the test do it):

    PEERS=n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
    python examples/bank.py --name n1 --peers $PEERS --withdraw 800
    python examples/bank.py --name n2 --peers $PEERS --withdraw 600
    python examples/bank.py --name n3 --peers $PEERS

Each prints, as one JSON line, every decision in log order and the final balance once it has
applied ``--expect`` withdrawals, then keeps serving until Ctrl-C (its peers still need it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import msgspec

import replog

OPENING_BALANCE = 1000


class Withdrawal(msgspec.Struct, frozen=True):
    id: str
    amount: int


class Decision(msgspec.Struct, frozen=True):
    id: str
    amount: int
    approved: bool
    balance: int


class Account(msgspec.Struct):
    balance: int = OPENING_BALANCE
    decisions: list[Decision] = []


class Bank:
    """The state machine: deterministic, so every server decides alike."""

    def __init__(self) -> None:
        self.account = Account()

    def apply(self, command: bytes) -> Decision | None:
        try:
            withdrawal = msgspec.json.decode(command, type=Withdrawal)
        except msgspec.DecodeError:
            return None  # not ours to understand; the same on every server
        approved = 0 < withdrawal.amount <= self.account.balance
        if approved:
            self.account.balance -= withdrawal.amount
        decision = Decision(withdrawal.id, withdrawal.amount, approved, self.account.balance)
        self.account.decisions.append(decision)
        return decision

    def snapshot(self) -> bytes:
        return msgspec.json.encode(self.account)

    def restore(self, data: bytes) -> None:
        self.account = msgspec.json.decode(data, type=Account)


async def main(args: argparse.Namespace) -> None:
    peers = dict(item.split("=", 1) for item in args.peers.split(","))
    bank = Bank()
    async with replog.Node(bank, name=args.name, data_dir=args.data_dir, peers=peers) as node:
        if args.withdraw:
            withdrawal = Withdrawal(f"{args.name}-1", args.withdraw)
            await node.propose(msgspec.json.encode(withdrawal), timeout_s=30)
        await node.wait_applied(lambda: len(bank.account.decisions) >= args.expect, 60)
        await node.read_barrier(timeout_s=30)
        print(json.dumps(msgspec.to_builtins(bank.account)), flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="this server's name, one of --peers")
    parser.add_argument("--peers", required=True, help="name=host:port,... for every server")
    parser.add_argument("--data-dir", help="default: ./bank-data/NAME")
    parser.add_argument("--withdraw", type=int, default=0, help="withdraw this many dollars")
    parser.add_argument("--expect", type=int, default=2, help="withdrawals to wait for")
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or f"./bank-data/{args.name}"
    return args


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
