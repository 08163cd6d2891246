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


FLAG_ALIASES = {"model": "model_name_or_path", "adapter": "adapter_name_or_path", "template": "template"}


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """(config file or None, `key=value` overrides); `--key value` and `--key=value` flags become overrides."""
    path = None
    if args and "=" not in args[0] and not args[0].startswith("-") and (
            args[0].endswith((".yaml", ".yml", ".json")) or os.path.exists(args[0])):
        path, args = args[0], args[1:]
    out, i = [], 0
    while i < len(args):
        item = args[i]
        if item.startswith("--"):
            key, sep, value = item[2:].partition("=")
            if not sep:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    value = "true"
                else:
                    value, i = args[i + 1], i + 1
            item = f"{FLAG_ALIASES.get(key, key).replace('-', '_')}={value}"
        out.append(item)
        i += 1
    return path, out


def _infer_config(args: list[str], purpose: str = "infer", extra_keys: tuple[str, ...] = ()):
    """Load a config for chat/api/export and check the model and adapter paths; returns (cfg, extras)."""
    from tuneforge import config, preflight

    path, overrides = _split_args(args)
    extras, rest = {}, []
    for item in overrides:
        key = item.partition("=")[0]
        (extras.__setitem__(key, item.partition("=")[2]) if key in extra_keys else rest.append(item))
    cfg = config.load(path, rest, purpose=purpose)
    preflight.check_model(cfg)
    return cfg, extras


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


def cmd_chat(args: list[str]) -> int:
    """tuneforge chat [CONFIG] [key=value ...]: streaming terminal chat (model, adapter, generation keys)."""
    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge chat [CONFIG.yaml] [model_name_or_path=M] [adapter_name_or_path=A] [temperature=0.7] "
              "[top_p=0.9] [top_k=50] [max_new_tokens=512] [repetition_penalty=1.0] [default_system=TEXT]\n"
              "  in the chat: /clear, /system TEXT, /exit")
        return 0
    from tuneforge.infer import ChatEngine, GenerationSettings
    from tuneforge.infer.chat_cli import run

    cfg, _ = _infer_config(args)
    engine = ChatEngine.from_config(cfg)
    return run(engine, GenerationSettings.from_section(cfg.generation))


def cmd_api(args: list[str]) -> int:
    """tuneforge api [CONFIG] --model M [--adapter A] [--host H] [--port P] [--api-key K]."""
    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge api [CONFIG.yaml] --model M [--adapter A] [--host 127.0.0.1] [--port 8000] [--api-key K]\n"
              "  [--name NAME] [--max-tokens 2048] [--max-request-bytes 1000000]; an API key is required off loopback\n"
              "  (or set TUNEFORGE_API_KEY). OpenAI routes: GET /v1/models, POST /v1/chat/completions")
        return 0
    from tuneforge import TuneforgeError
    from tuneforge.serve.run import serve

    cfg, extras = _infer_config(args, extra_keys=("host", "port", "api_key", "name", "max_tokens", "max_request_bytes"))
    try:
        return serve(cfg, host=extras.get("host", "127.0.0.1"), port=int(extras.get("port", 8000)),
                     api_key=extras.get("api_key") or os.environ.get("TUNEFORGE_API_KEY"), name=extras.get("name"),
                     max_tokens=int(extras.get("max_tokens", 2048)), max_request_bytes=int(extras.get("max_request_bytes", 1_000_000)))
    except ValueError as e:
        raise TuneforgeError(f"--port, --max-tokens and --max-request-bytes take whole numbers ({e})") from None


def cmd_export(args: list[str]) -> int:
    """tuneforge export [CONFIG] key=value ...: merge an adapter into its base and save a standalone folder."""
    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge export [CONFIG.yaml] model_name_or_path=M adapter_name_or_path=A export_dir=D "
              "[export_size=5 (GB per shard)] [export_dtype=bfloat16|float16|float32] [export_ollama=true] [export_overwrite=true]")
        return 0
    from tuneforge.export import export_model

    cfg, _ = _infer_config(args, purpose="export")
    out = export_model(cfg)
    print(f"exported to {out}")
    return 0


def cmd_version(args: list[str]) -> int:
    import tuneforge

    print(f"tuneforge {tuneforge.__version__}")
    return 0


COMMANDS = {"train": cmd_train, "chat": cmd_chat, "api": cmd_api, "export": cmd_export, "version": cmd_version}


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
