"""Command line: `python -m service serve|transcribe|evaluate|samples|keys|config`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from service import cli
from service.errors import MissingExtraError
from service.keys import KeysFileError

if TYPE_CHECKING:
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="Speech recognition service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service (settings from ASR_* variables)")
    serve.add_argument("--host", help="bind address (default ASR_HOST)")
    serve.add_argument("--port", type=int, help="port (default ASR_PORT)")
    serve.set_defaults(run=cli.serve)

    tr = sub.add_parser("transcribe", help="transcribe files in-process, without a server")
    tr.add_argument("files", nargs="+", metavar="FILE")
    tr.add_argument("--format", choices=["json", "text", "srt", "vtt"], default="text")
    tr.add_argument("--language", help="language code (default: detect)")
    tr.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    tr.add_argument("--word-timestamps", action="store_true")
    tr.add_argument(
        "--diarize", action="store_true", help="who spoke: speakers in json, srt and vtt (extra: diarization)"
    )
    tr.add_argument("--output-dir", help="write FILE-stem.FORMAT files here instead of printing")
    tr.set_defaults(run=cli.transcribe)

    ev = sub.add_parser("evaluate", help="score the model offline on audio files with reference texts")
    ev.add_argument("--dir", required=True, help="folder of audio files, each with a NAME.txt reference beside it")
    ev.add_argument("--language", help="language of every file (default: NAME.lang beside it, else detected)")
    ev.add_argument("--json", action="store_true", help="print the table as JSON")
    ev.set_defaults(run=cli.evaluate)

    samples = sub.add_parser("samples", help="manage kept quality samples")
    ssub = samples.add_subparsers(dest="samples_command", required=True)
    exp = ssub.add_parser("export", help="write audio + hypothesis of samples to a folder for review")
    exp.add_argument("dir")
    exp.add_argument("--status", default="pending", choices=["pending", "referenced", "scored", "skipped", "all"])
    exp.set_defaults(run=cli.samples_export)
    imp = ssub.add_parser("import-references", help="attach references from a CSV (id,text) or JSONL file")
    imp.add_argument("file")
    imp.set_defaults(run=cli.samples_import)
    rep = ssub.add_parser(
        "report", help="error rates of the scored samples: weighted estimate, 95%% interval, shadow agreement"
    )
    rep.add_argument("--json", action="store_true", help="print the table as JSON")
    rep.set_defaults(run=cli.samples_report)

    keys = sub.add_parser("keys", help="API keys: make one, hash one made elsewhere, list them (docs/auth.md)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    add = ksub.add_parser("add", help="make a random key NAME, append its hash to the keys file, print the key once")
    add.add_argument("name")
    add.add_argument("--file", help="the keys file (default ASR_API_KEYS); created if missing")
    add.add_argument("--max-in-flight", type=int, help="this key's limit (default ASR_KEY_MAX_IN_FLIGHT)")
    add.add_argument(
        "--audio-seconds-per-hour", type=float, help="this key's budget (default ASR_KEY_AUDIO_SECONDS_PER_HOUR)"
    )
    add.set_defaults(run=cli.keys_add)
    khash = ksub.add_parser("hash", help="print the SHA-256 of the key read from stdin, for the keys file")
    khash.set_defaults(run=cli.keys_hash)
    klist = ksub.add_parser("list", help="the accepted keys' names and limits")
    klist.add_argument("--file", help="the keys file (default ASR_API_KEYS)")
    klist.set_defaults(run=cli.keys_list)

    conf = sub.add_parser("config", help="print the configuration table (markdown)")
    conf.set_defaults(run=cli.print_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (MissingExtraError, KeysFileError) as exc:  # a configuration error: one line naming it, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
