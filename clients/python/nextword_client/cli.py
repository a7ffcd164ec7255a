"""The `nextword` command line: predict, generate (tokens printed as they arrive) and sessions, over
the Python client. Knows argparse and the terminal; every call goes through `Client`.

    nextword predict "The game began"                 # top words and probabilities (words only; --all-tokens)
    nextword suggest "The game began development in Ja"   # completions of the word being typed
    SID=$(nextword sessions create)                   # prints the new session id
    nextword generate --session $SID "The game" --max-tokens 20 --seed 7
    nextword sessions show $SID                       # JSON
    nextword sessions delete $SID

`--url` (env NEXTWORD_URL, default http://127.0.0.1:8000) and `--api-key` (env NEXTWORD_API_KEY)
go before the command. Exit status: 0 done, 1 the service answered with an error, 2 bad usage,
3 the service could not be reached or a stream broke, 130 interrupted, 141 the reader of its output
went away (`nextword models | head`), quietly, as a program killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nextword_client.client import DEFAULT_TIMEOUT, DEFAULT_URL, Client
from nextword_client.errors import APIError, StreamInterrupted, TransportError

EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED, EXIT_PIPE = 1, 2, 3, 130, 141


def _parser() -> argparse.ArgumentParser:
    # Environment defaults are read here, once: the CLI is a separate program from the service.
    env = os.environ
    # Each help text says its default once, itself: a formatter that appends "(default: …)" would repeat it.
    p = argparse.ArgumentParser(prog="nextword", description="Client of the nextword next-word-prediction service.")
    p.add_argument("--url", default=env.get("NEXTWORD_URL") or DEFAULT_URL,
                   help=f"service base URL (default: $NEXTWORD_URL, else {DEFAULT_URL})")
    p.add_argument("--api-key", default=env.get("NEXTWORD_API_KEY") or None,
                   help="API key sent as a Bearer token (default: $NEXTWORD_API_KEY, else none)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds to wait for the service (default: %(default)s)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = commands.add_parser("predict", help="next-word distribution of a text")
    pr.add_argument("text")
    pr.add_argument("--model", help="bundle name (default: the service's default model)")
    pr.add_argument("--top-k", type=int, default=10, help="how many words to show (default: %(default)s)")
    pr.add_argument("--session", help="append the text to this session's context")
    pr.add_argument("--prefix", help="the characters typed so far of the next word: rank only its completions")
    pr.add_argument("--case-sensitive", action="store_true", help="match --prefix case-sensitively")
    pr.add_argument("--all-tokens", action="store_true",
                    help="rank every token (<unk>, punctuation, <eos>...), not only words a person would pick")
    pr.add_argument("--json", action="store_true", help="print the API's JSON answer")

    su = commands.add_parser("suggest", help="what a keyboard shows for a text as typed: the trailing letters are "
                                             "the word in progress")
    su.add_argument("typed", help='e.g. "The game began development in Ja"')
    su.add_argument("--model", help="bundle name (default: the service's default model)")
    su.add_argument("--top-k", type=int, default=3, help="how many suggestions to show (default: %(default)s)")
    su.add_argument("--session", help="feed the complete words to this session (never the word in progress)")
    su.add_argument("--case-sensitive", action="store_true", help="match the word in progress case-sensitively")
    su.add_argument("--json", action="store_true", help="print the API's JSON answer")

    ge = commands.add_parser("generate", help="stream a continuation, tokens printed as they arrive")
    ge.add_argument("text", nargs="?", help="prompt fed to the session first")
    ge.add_argument("--session", help="session id (default: a new session, its id printed on stderr)")
    ge.add_argument("--model", help="model of the new session when --session is not given (default: the "
                                    "service's default model)")
    ge.add_argument("--max-tokens", type=int, help="tokens to generate (default: the service's)")
    ge.add_argument("--temperature", type=float, help="> 0; 1e-5 or less is greedy (default: the service's)")
    ge.add_argument("--top-k", type=int, help="sample among the k likeliest words, 0 = off (default: the service's)")
    ge.add_argument("--top-p", type=float, help="nucleus sampling, 0 < p <= 1 (default: the service's)")
    ge.add_argument("--seed", type=int, help="the same seed on the same session state gives the same words "
                                             "(default: a random one)")
    ge.add_argument("--stop", action="append", metavar="WORD", help="a word that ends the generation (repeatable)")

    se = commands.add_parser("sessions", help="create, show or delete a session")
    actions = se.add_subparsers(dest="action", required=True, metavar="ACTION")
    cr = actions.add_parser("create", help="create a session and print its id")
    cr.add_argument("--model", help="bundle name (default: the service's default model)")
    cr.add_argument("--json", action="store_true", help="print the whole session as JSON")
    actions.add_parser("show", help="print a session as JSON").add_argument("session_id")
    actions.add_parser("delete", help="delete a session").add_argument("session_id")

    commands.add_parser("models", help="list the served models as JSON")
    return p


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _predict(nw: Client, args) -> None:
    _show(nw.predict(args.text, model=args.model, top_k=args.top_k, session_id=args.session, prefix=args.prefix,
                     case_sensitive=args.case_sensitive or None, words_only=not args.all_tokens), args.json)


def _suggest(nw: Client, args) -> None:
    _show(nw.suggest(args.typed, model=args.model, top_k=args.top_k, session_id=args.session,
                     case_sensitive=args.case_sensitive or None), args.json)


def _show(answer: dict, as_json: bool) -> None:
    """Word and probability per line; with a filter, a last line (on stderr) saying what was ranked."""
    if as_json:
        _print_json(answer)
        return
    width = max((len(p["word"]) for p in answer["predictions"]), default=0)
    for p in answer["predictions"]:
        print(f"{p['word']:<{width}}  {p['probability']:.4f}")
    kept = answer.get("filter")
    if kept is not None:
        what = f"words starting with {kept['prefix']!r}" if kept["prefix"] else "words"
        print(f"{kept['matches']} {what}, together {kept['mass']:.4f} of the probability"
              + ("" if kept["matches"] else ": no suggestion"), file=sys.stderr)


def _generate(nw: Client, args) -> None:
    session = args.session
    if session is None:
        session = nw.create_session(args.model)["session_id"]
        print(f"session {session}", file=sys.stderr)
    generation = nw.generate(session, args.text, max_tokens=args.max_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop)
    with generation:
        try:
            for i, token in enumerate(generation):
                print(("" if i == 0 else " ") + token.word, end="", flush=True)
        finally:
            if generation.tokens:  # end the line of words before any error message
                print(flush=True)
    result = generation.result
    print(f"finish_reason={result['finish_reason']} tokens={result['tokens']} "
          f"session_tokens={result['session']['tokens']}", file=sys.stderr)


def _sessions(nw: Client, args) -> None:
    if args.action == "create":
        session = nw.create_session(args.model)
        if args.json:
            _print_json(session)
        else:
            print(session["session_id"])
    elif args.action == "show":
        _print_json(nw.get_session(args.session_id))
    else:
        nw.delete_session(args.session_id)


def _session_ids_as_values(argv: list[str]) -> list[str]:
    """Session ids are base64url and may begin with `-`, which argparse would take for an option:
    `--session ID` becomes `--session=ID`, and `sessions show|delete ID` gets a `--` before the id."""
    out = []
    for i, arg in enumerate(argv):
        before = argv[i - 1] if i else ""
        if before == "--session" and arg.startswith("-"):
            out[-1] = f"--session={arg}"
            continue
        if (before in ("show", "delete") and "sessions" in argv[:i] and arg.startswith("-")
                and arg not in ("--", "-h", "--help")):
            out.append("--")
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_session_ids_as_values(sys.argv[1:] if argv is None else list(argv)))
    run = {"predict": _predict, "suggest": _suggest, "generate": _generate, "sessions": _sessions,
           "models": lambda nw, _: _print_json(nw.models())}[args.command]
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout) as nw:
            run(nw, args)
    except APIError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_API
    except (TransportError, StreamInterrupted) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _reader_gone()
    try:
        sys.stdout.flush()  # a closed pipe shows here when the output fit in the buffer
    except BrokenPipeError:
        return _reader_gone()
    return 0


def _reader_gone() -> int:
    """stdout's reader closed the pipe: no traceback, and nothing more written (Python flushes stdout at exit,
    which would fail again), as the Python documentation on SIGPIPE advises."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
