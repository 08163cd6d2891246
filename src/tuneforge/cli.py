"""`tuneforge <command>`: argument parsing only; the work is in the library."""

import argparse
import logging
import os
import sys


def _setup_logging() -> None:
    import warnings

    # peft calls a transformers alias deprecated in v5; nothing for a user to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s|%(name)s] %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    path = None
    if args and "=" not in args[0] and (args[0].endswith((".yaml", ".yml", ".json")) or os.path.exists(args[0])):
        path, args = args[0], args[1:]
    return path, args


def cmd_train(args: list[str]) -> int:
    """tuneforge train [CONFIG.yaml] [key=value ...]"""
    from tuneforge import config, preflight, stages

    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge train [CONFIG.yaml] [key=value ...]\n"
              "  Runs the YAML recipe (LLaMA-Factory keys work); key=value pairs override it.\n"
              "  tuneforge train --help-keys lists every key with its help.")
        return 0
    if args and args[0] == "--help-keys":
        return _print_keys()
    path, overrides = _split_args(args)
    cfg = config.load(path, overrides)
    preflight.check(cfg)
    metrics = stages.get(cfg.method.stage)(cfg)
    print(f"done: train_loss={metrics.get('train_loss', float('nan')):.4f} "
          f"train_tokens_per_second={metrics.get('train_tokens_per_second')} output_dir={cfg.output.output_dir}")
    return 0


def _print_keys() -> int:
    import dataclasses

    from tuneforge.config.loader import BASE_SECTIONS, _ensure_methods_registered
    from tuneforge.config.registry import METHOD_SECTIONS

    _ensure_methods_registered()
    for name, cls in {**BASE_SECTIONS, **METHOD_SECTIONS}.items():
        print(f"# {name}")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"  {f.name} (default {default!r}): {f.metadata.get('help', '')}")
    print("# train: every transformers.TrainingArguments name (learning_rate, per_device_train_batch_size, max_steps, ...)")
    return 0


def cmd_version(args: list[str]) -> int:
    import tuneforge

    print(f"tuneforge {tuneforge.__version__}")
    return 0


COMMANDS = {"train": cmd_train, "version": cmd_version}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tuneforge <command> [args]\ncommands: " + ", ".join(COMMANDS))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from tuneforge.config.errors import did_you_mean

        print(f"error: unknown command `{command}`{did_you_mean(command, COMMANDS)}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    _setup_logging()
    from tuneforge import TuneforgeError

    try:
        return COMMANDS[command](rest)
    except TuneforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; checkpoints already written are kept (resume_from_checkpoint: auto continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
