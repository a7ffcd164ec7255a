"""Command line: `python -m training {train,export,evaluate}`. Errors end in one line and exit 2."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def _command(argv: list[str]) -> str:
    return "python -m training " + " ".join(shlex.quote(a) for a in argv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a language model on a corpus folder (train/valid/test.txt)")
    t.add_argument("--data", required=True, help="folder with train.txt, valid.txt, test.txt")
    t.add_argument("--out", default="runs/model", help="output folder for best.pt / last.pt")
    t.add_argument("--architecture", "--model", default="lstm", help="rnn_tanh | rnn_relu | lstm | gru")
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--embedding-size", type=int, default=200)
    t.add_argument("--hidden-size", type=int, default=200)
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--tied", action="store_true", help="tie decoder and embedding weights (full softmax only)")
    t.add_argument("--softmax", default="full", help="full | adaptive (exact full distribution at export either way)")
    t.add_argument("--cutoffs", default="2000,10000", help="adaptive softmax cluster boundaries by frequency rank")
    t.add_argument("--div-value", type=float, default=4.0, help="adaptive softmax tail projection divisor")
    t.add_argument("--batch-size", type=int, default=20)
    t.add_argument("--eval-batch-size", type=int, default=10)
    t.add_argument("--bptt", type=int, default=35, help="truncated backprop length")
    t.add_argument("--optimizer", default="sgd", help="sgd | adam")
    t.add_argument("--lr", type=float, default=20.0)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", default="plateau", help="plateau (divide lr when validation stalls) | cosine")
    t.add_argument("--lr-decay-factor", type=float, default=4.0)
    t.add_argument("--clip", type=float, default=0.25, help="gradient norm clip (0 = off)")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--budget-minutes", type=float, default=0.0, help="stop after this wall time (0 = none)")
    t.add_argument("--seed", type=int, default=1111)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    t.add_argument("--max-steps", type=int, default=0, help="cap batches per epoch (smoke runs)")
    t.add_argument("--text-convention", default="wikitext", help="wikitext | whitespace: how user text is split")
    t.add_argument("--resume", help="continue from a last.pt checkpoint")

    e = sub.add_parser("export", help="export a checkpoint to a verified ONNX bundle folder")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True, help="bundle folder, e.g. models/wikitext2-lstm")
    e.add_argument("--name", help="bundle name (default: the folder's name)")
    e.add_argument("--data", help="corpus folder: measure valid/test perplexity of the exported file")
    e.add_argument("--verify-steps", type=int, default=20)
    e.add_argument("--context-window", type=int, default=0,
                   help="with --data: record test perplexity by context length (state reset every N tokens)")

    v = sub.add_parser("evaluate", help="perplexity of a bundle through onnxruntime (no torch)")
    v.add_argument("--bundle", required=True)
    v.add_argument("--text", required=True, help="token file, one <eos> appended per line")
    v.add_argument("--batch-size", type=int, default=10)
    v.add_argument("--context-window", type=int, default=0,
                   help="also report perplexity by context length, resetting the state every N tokens (0 = off)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    from training.errors import TrainingError

    try:
        if args.cmd == "evaluate":
            from training.evaluate import evaluate_file

            if args.context_window < 0:  # --batch-size is checked where the streams are cut (batchify)
                raise TrainingError("--context-window must not be negative")
            result = evaluate_file(args.bundle, args.text, args.batch_size, args.context_window)
        elif args.cmd == "export":
            from training.export import export

            result = export(args.checkpoint, args.out, args.name, args.data, _command(argv), args.verify_steps,
                            args.context_window)
        else:
            from training.data import check_corpus

            check_corpus(args.data)  # a bad --data fails here, before torch takes seconds to import
            from training.model import ModelConfig
            from training.train import TrainConfig, train

            try:
                cutoffs = [int(c) for c in args.cutoffs.split(",") if c.strip()]
            except ValueError:
                raise TrainingError(f"--cutoffs must be comma-separated integers, got {args.cutoffs!r}") from None
            if args.text_convention not in ("wikitext", "whitespace"):
                raise TrainingError(f"unknown text convention {args.text_convention!r}; choose wikitext or whitespace")
            tc = TrainConfig(data=args.data, out=args.out, text_convention=args.text_convention,
                             batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, bptt=args.bptt,
                             optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                             schedule=args.schedule, lr_decay_factor=args.lr_decay_factor, clip=args.clip,
                             epochs=args.epochs, budget_minutes=args.budget_minutes, seed=args.seed,
                             threads=args.threads, max_steps=args.max_steps, command=_command(argv))
            mc = ModelConfig(architecture=args.architecture, embedding_size=args.embedding_size,
                             hidden_size=args.hidden_size, layers=args.layers, dropout=args.dropout, tied=args.tied,
                             softmax=args.softmax, cutoffs=cutoffs, div_value=args.div_value)
            if min(tc.batch_size, tc.eval_batch_size, tc.bptt, tc.epochs) < 1 or tc.lr <= 0:
                raise TrainingError("--batch-size, --eval-batch-size, --bptt, --epochs and --lr must be positive")
            if min(tc.max_steps, tc.threads) < 0:
                raise TrainingError("--max-steps and --threads must not be negative")
            mc.vocab_size = 1  # real size is set from the corpus; validate the rest early
            mc.validate() if mc.softmax == "full" else ModelConfig(**{**mc.to_dict(), "softmax": "full", "tied": False}).validate()
            result = train(tc, mc, resume=args.resume)
    except (TrainingError, OSError) as e:  # OSError: an unwritable --out, a full disk, …
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)  # exactly one line, whatever the message held
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
