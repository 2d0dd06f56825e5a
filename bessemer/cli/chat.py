"""`bessemer chat`: an interactive conversation in the terminal, streamed; /reset and /exit."""

from __future__ import annotations

import argparse
import sys

from bessemer.cli.generate import (
    add_model_arguments,
    add_sampling_arguments,
    job_config,
    load,
    sampling_params,
)

HELP = "chat with a checkpoint or a Hugging Face folder in the terminal (/reset, /exit)"
COMMANDS = "commands: /reset forgets the conversation, /exit quits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", help="system message at the start of every conversation")
    add_sampling_arguments(p)


CHAT_DEFAULTS = {"max_new_tokens": 512, "temperature": 0.7, "top_p": 0.9}  # unless the TOML or an option says


def run(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    from bessemer.errors import BessemerError
    from bessemer.infer.chat import ChatSession

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin.isatty()
    gen = job_config(args, CHAT_DEFAULTS).generate
    session = ChatSession(load(args, gen), sampling_params(gen), system=args.system, compile=gen.compile)
    if interactive:
        stdout.write(f"{session.loaded.name} ({session.loaded.template} template). {COMMANDS}\n")
    while True:
        if interactive:
            stdout.write(">>> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # end of input (Ctrl-D): leave the terminal on a fresh line
            if interactive:
                stdout.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            stdout.write("(conversation cleared)\n")
            continue
        if text.startswith("/"):
            stdout.write(f"unknown command {text.split()[0]}; {COMMANDS}\n")
            continue
        try:
            req = session.prepare(text)
            if session.dropped:
                stdout.write(
                    f"(the {session.dropped} oldest exchange(s) no longer fit the context of "
                    f"{session.context_len} tokens and were forgotten)\n"
                )
            for delta in session.reply(req):
                stdout.write(delta)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [interrupted]")
        except BessemerError as exc:  # e.g. a message too long for the context: say so and go on chatting
            stdout.write(f"error: {exc}")
        stdout.write("\n")
        stdout.flush()
    return 0
