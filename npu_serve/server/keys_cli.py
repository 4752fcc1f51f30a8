"""``npu-serve keys create | list | delete``: manage the API keys file.

``add_keys_parser(subparsers)`` plugs the commands into the ``npu-serve`` argparse tree; each leaf
sets ``func`` to a callable ``(args) -> int`` (the exit code). ``main(argv)`` runs them standalone
(``python -m npu_serve.server.keys_cli keys list``). Rule violations print one line to stderr and
exit with 2.
"""

from __future__ import annotations

import argparse
import sys

from npu_serve.server.keys import KeyStore, KeyStoreError, default_keys_db_path


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(args.keys_db or default_keys_db_path())


def _create(args: argparse.Namespace) -> int:
    secret = _store(args).create(args.label, args.description)
    print(f"Created API key {args.label!r}:")
    print(secret)
    print("Save it now: this is the only time it is shown. A lost key can't be recovered; "
          "create a new one and delete the old.")
    return 0


def _list(args: argparse.Namespace) -> int:
    keys = _store(args).list()
    if not keys:
        print("No API keys.")
        return 0
    header = ("LABEL", "PREFIX", "CREATED (UTC)", "DESCRIPTION")
    rows = [header] + [(k.label, k.prefix, k.created_at, k.description) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def _delete(args: argparse.Namespace) -> int:
    _store(args).delete(args.label)
    print(f"Deleted API key {args.label!r}.")
    return 0


def _guarded(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (KeyStoreError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run


def add_keys_parser(subparsers) -> None:
    keys = subparsers.add_parser("keys", help="manage API keys (create, list, delete)")
    sub = keys.add_subparsers(dest="keys_command", metavar="{create,list,delete}", required=True)
    db_help = f"keys file (default: {default_keys_db_path()}, under $NPU_SERVE_DATA if set)"

    create = sub.add_parser("create", help="create a key and print its secret (shown only once)")
    create.add_argument("--label", required=True, help="unique; letters, digits, _ and -; 1-100 characters")
    create.add_argument("--description", required=True, help="1-100 characters")
    create.add_argument("--keys-db", default=None, help=db_help)
    create.set_defaults(func=_guarded(_create))

    lst = sub.add_parser("list", help="list keys (label, prefix, creation time, description)")
    lst.add_argument("--keys-db", default=None, help=db_help)
    lst.set_defaults(func=_guarded(_list))

    delete = sub.add_parser("delete", help="delete a key by label")
    delete.add_argument("--label", required=True)
    delete.add_argument("--keys-db", default=None, help=db_help)
    delete.set_defaults(func=_guarded(_delete))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npu-serve")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
