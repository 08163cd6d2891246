"""`tuneforge <command>`: argument parsing only; the work is in the library."""

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
    # bitsandbytes (imported by every config load, through transformers and peft) warns on the CPU that the optional
    # `kernels` package is missing; it then uses its own 4-bit path, which our QLoRA tests and benchmarks run on
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


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
    """tuneforge train [CONFIG.yaml] [key=value ...]: load and validate the config, then the one run path."""
    from tuneforge import config, run
    from tuneforge.distributed import launch

    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge train [CONFIG.yaml] [key=value ...]\n"
              "  Runs the YAML recipe (LLaMA-Factory keys work); key=value pairs override it.\n"
              "  tuneforge train --help-keys lists every key with its help (--help-keys --json: machine-readable).\n"
              "  The run appends its phases and progress to OUTPUT_DIR/events.jsonl.")
        return 0
    if args and args[0] == "--help-keys":
        return _print_keys(json_out="--json" in args[1:])
    path, overrides = _split_args(args)
    cfg = config.load(path, overrides)
    if (code := launch.from_cli(args, cfg)) is not None:  # several processes: launch them, or run as one of them
        return code
    metrics = run.train(cfg)
    print(f"done: train_loss={metrics.get('train_loss', float('nan')):.4f} "
          f"train_tokens_per_second={metrics.get('train_tokens_per_second')} output_dir={cfg.output.output_dir}")
    return 0


def cmd_estimate(args: list[str]) -> int:
    """tuneforge estimate [CONFIG] [key=value ...] [--model M] [--batch B] [--seq S] [--json] [--fit 24GiB] ..."""
    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge estimate [CONFIG.yaml] [--model llama3-8b] [--finetuning_type lora] [--batch 8] [--seq 512]\n"
              "  [--json] [--convention realistic|article] [--fit 24GiB|auto] [--world_size 8 --sharding ddp|zero1|zero2|zero3|fsdp]\n"
              "  [--device cpu|cuda (estimate for a GPU from here: bf16 weights, CUDA context)]\n"
              "  [any config key=value]. Shipped model configs: llama3-8b llama3-70b llama2-7b llama2-13b llama2-70b\n"
              "  mistral-7b qwen2.5-7b gemma-2b gemma-7b smollm2-135m (or a folder with config.json).")
        return 0
    import json

    from tuneforge import config
    from tuneforge.config.errors import ConfigError
    from tuneforge.memory import GIB, describe, device_memory, parse_size
    from tuneforge.memory.api import input_from_config, shape_of
    from tuneforge.memory.estimate import SHARDINGS
    from tuneforge.memory.fit import render, search, stage_memory
    from tuneforge.train import checkpointing

    path, overrides = _split_args(args)
    own = {"json": None, "convention": "realistic", "fit": None, "world_size": None, "sharding": None, "batch": None, "seq": None,
           "device": None}
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in own:
            own[key] = value
        else:
            rest.append(item)
    cfg = config.load(path, rest, purpose="infer")
    problems = []
    if own["convention"] not in ("realistic", "article"):
        problems.append(f"--convention must be realistic or article (got {own['convention']})")
    if own["device"] not in (None, "cpu", "cuda"):
        problems.append(f"--device must be cpu or cuda (got {own['device']})")
    if own["sharding"] is not None and own["sharding"] not in SHARDINGS:
        problems.append(f"--sharding must be one of {', '.join(SHARDINGS)} (got {own['sharding']})")
    try:
        ints = {k: int(own[k]) if own[k] is not None else None for k in ("batch", "seq", "world_size")}
    except ValueError:
        problems.append("--batch, --seq and --world_size take whole numbers")
        ints = {}
    if problems:
        raise ConfigError(problems)
    cfg = config.resolve(cfg, quiet=True)
    batch = None
    if cfg.data.dataset and ints.get("batch") is None and ints.get("seq") is None:
        from tuneforge import preflight
        from tuneforge.run import batch_memo
        from tuneforge.run.memory_check import batch_from_data

        preflight.check(cfg, ints.get("world_size"))
        memo = batch_memo.key(cfg)
        batch = batch_memo.recall(cfg, memo)
        if batch is None:
            batch = batch_from_data(cfg)  # tokenizer only: the real largest batch of the config's data
            batch_memo.remember(cfg, memo, batch)
    if batch is not None:
        x = input_from_config(cfg, batch=batch.rows, seq=batch.seq, attention_seq=batch.longest, world_size=ints.get("world_size"),
                              sharding=own["sharding"])
    else:
        x = input_from_config(cfg, batch=ints.get("batch"), seq=ints.get("seq"), world_size=ints.get("world_size"),
                              sharding=own["sharding"])
    if x.world_size > 1 and x.sharding == "none":
        x.sharding = "ddp"
    if own["device"]:  # estimate for another device than this one (a GPU from a laptop, say)
        x.device = own["device"]
        if "torch_dtype" not in cfg.given:  # resolution filled `auto` for this machine; another device gets its own
            x.dtype = "bfloat16" if x.device == "cuda" else "float32"
    from tuneforge.memory.estimate import estimate_shape

    shape = shape_of(cfg.model.model_name_or_path, cfg.model.cache_dir)
    adjust = stage_memory(cfg)  # the stage's rows and copies (a preference pair's two rows, a reference model)
    counted = adjust(x) if adjust else x
    report = estimate_shape(shape, counted, own["convention"])
    if own["fit"] is not None:
        if own["fit"] in ("auto", "true", ""):
            budget = device_memory()[0]
        else:
            try:
                budget = parse_size(own["fit"])
            except ValueError:
                raise ConfigError([f"--fit takes a size such as 24GiB, 80GB or auto (got {own['fit']})"]) from None
        effective = x.batch * int(cfg.train.get("gradient_accumulation_steps", 1))
        fits = search(shape, x, budget, effective, adjust=adjust)
        if own["json"] is not None:
            print(json.dumps({"budget_gib": round(budget / GIB, 3), "fits": [
                {"name": f.name, "yaml": f.yaml(), "speed": round(f.speed, 3), **f.report.to_dict()} for f in fits]}))
        else:
            print(render(fits, budget))
        return 0
    from tuneforge.run.memory_check import counted as stage_counts

    how = stage_counts(batch.what if batch is not None else (
        f"{x.batch} row{'s' if x.batch != 1 else ''} x {x.seq} tokens" + ("" if ints.get("batch") or ints.get("seq") else
                                              " (worst case: every row cutoff_len long; give a dataset to measure its real batch)")),
        x, counted)
    if own["json"] is not None:
        print(json.dumps({**report.to_dict(), "batch": how}))
        return 0
    total, what = device_memory() if not own["device"] or (own["device"] == "cuda") == (x.device == "cuda") else (None, "")
    if own["device"] == "cuda" and "GPU" not in what:
        total = None
    print(f"{shape.name or cfg.model.model_name_or_path}: {x.finetuning_type}"
          f"{f' ({x.quantization_bit}-bit)' if x.quantization_bit else ''}, batch {counted.batch} x seq {counted.seq}, {x.dtype}"
          f"{', ' + checkpointing.describe(x.checkpoint_every) if x.gradient_checkpointing else ''}{f', {x.sharding} x {x.world_size}' if x.world_size > 1 else ''}"
          + (f"; {report.trainable_params:,} of {report.total_params:,} parameters train ({report.convention} accounting)"
             if report.known else ""))
    print(f"largest batch: {how}")
    print(describe(report, total))
    if own["convention"] == "article":
        print(f"article convention: {report.detail['differs_from_realistic']}")
    else:
        print("realistic accounting: gradients, master weights where they exist, GQA/gated-MLP shapes and the logits are counted; "
              "--convention article gives the seed article's simpler table")
    return 0


def _print_keys(json_out: bool = False) -> int:
    """Every key from `config.describe()`: section, type, choices, default, help; stages and methods from their registries."""
    import json

    from tuneforge.config import describe
    from tuneforge.config.describe import method_summaries, stage_summaries

    keys = describe()
    if json_out:
        print(json.dumps([k.to_dict() for k in keys]))
        return 0
    print("# stages (stage:)")
    for name, kind, text in stage_summaries():
        print(f"  {name} ({kind} data): {text}")
    print("# methods (finetuning_type:)")
    for name, text in method_summaries():
        print(f"  {name}: {text}")
    section = None
    for k in keys:
        if (k.section, k.owner if k.section == "method" else None) != section:
            section = (k.section, k.owner if k.section == "method" else None)
            title = f"{k.section}: finetuning_type {k.owner.replace(',', ' / ')}" if k.section == "method" and k.owner else k.section
            print(f"# {title}" + (" (the stage's arguments class: transformers.TrainingArguments or a TRL config)"
                                  if k.section == "train" else ""))
        kind = f"one of {', '.join(map(str, k.choices))}" if k.choices else k.type
        marks = "".join([" [LLaMA-Factory]" if k.llamafactory and k.section != "train" else "",
                         f" [stage {k.owner}]" if k.section == "train" and k.owner else ""])
        print(f"  {k.name} ({kind}{', optional' if k.optional else ''}; default {k.default!r}){marks}: {k.help}")
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

    def whole(key: str, default: int, low: int, high: int | None = None) -> int:
        raw = str(extras.get(key, default)).strip()
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            span = f"{low}-{high}" if high is not None else f">= {low}"
            raise TuneforgeError(f"--{key.replace('_', '-')} takes a whole number {span} (got {raw})")
        return value

    # checked before the model loads, so an error while loading it is reported as itself, not as a bad flag
    port = whole("port", 8000, 1, 65535)
    max_tokens = whole("max_tokens", 2048, 1)
    max_request_bytes = whole("max_request_bytes", 1_000_000, 1)
    return serve(cfg, host=extras.get("host", "127.0.0.1"), port=port,
                 api_key=extras.get("api_key") or os.environ.get("TUNEFORGE_API_KEY"), name=extras.get("name"),
                 max_tokens=max_tokens, max_request_bytes=max_request_bytes)


def cmd_export(args: list[str]) -> int:
    """tuneforge export [CONFIG] key=value ...: merge an adapter into its base, save a folder or a GGUF, check it."""
    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge export [CONFIG.yaml] model_name_or_path=M adapter_name_or_path=A export_dir=D\n"
              "  [export_format=hf|gguf] [export_dtype=bfloat16|float16|float32 (hf)] [export_size=5 (GB per shard, hf)]\n"
              "  [gguf_quantization=f16|f32|bf16|q8_0|q5_1|q5_0|q4_1|q4_0 (gguf)] [export_ollama=true] [export_overwrite=true]\n"
              "  [export_verify=error|warn|off] [export_probe_file=probes.json] [export_probe_tokens=24]\n"
              "  The export is checked against base + adapter on probe chats; the verdict is printed and the details\n"
              "  are in EXPORT_DIR/export_report.json (on failure: EXPORT_DIR.export_report.json, EXPORT_DIR untouched).")
        return 0
    import json

    from tuneforge.export import export_model

    cfg, _ = _infer_config(args, purpose="export")
    out = export_model(cfg)
    report = os.path.join(out, "export_report.json")
    if os.path.isfile(report):
        with open(report, encoding="utf-8") as fh:
            print(f"export check: {json.load(fh)['verdict']} (details: {report})")
    print(f"exported to {out}")
    return 0


def cmd_eval(args: list[str]) -> int:
    """tuneforge eval [CONFIG] [key=value ...]: multiple choice, generation metrics, perplexity; --compare A B: side by side."""
    if args and args[0] in ("-h", "--help"):
        print("usage: tuneforge eval [CONFIG.yaml] [model_name_or_path=M] [adapter_name_or_path=A] [key=value ...]\n"
              "  multiple choice: task_dir=path/to/task [split=test] or task_dir=evaluation task=mmlu_test; n_shot=5 lang=en|zh\n"
              "  generation: predict=true with eval_dataset=NAME (or dataset=NAME val_size=0.1); max_new_tokens=128\n"
              "  perplexity: perplexity_dataset=NAME; batch_size=4 save_dir=DIR (results.json, generated_predictions.jsonl)\n"
              "  tuneforge eval --compare A/results.json B/results.json   two results side by side (before/after)")
        return 0
    from tuneforge.evaluate import compare, evaluate, load, table

    if args and args[0] == "--compare":
        if len(args) != 3:
            from tuneforge import TuneforgeError

            raise TuneforgeError("--compare takes two results files: tuneforge eval --compare A/results.json B/results.json")
        print(f"A = {args[1]}\nB = {args[2]}")
        print(compare(load(args[1]), load(args[2])))
        return 0
    cfg, _ = _infer_config(args, purpose="eval")
    record = evaluate(cfg, save_dir=cfg.eval.save_dir or cfg.output.output_dir or None)
    print(table(record))
    return 0


def cmd_data(args: list[str]) -> int:
    """tuneforge data check [CONFIG] [key=value ...] [--json]: the dataset doctor (tokenizer only, no model weights)."""
    usage = ("usage: tuneforge data check [CONFIG.yaml] [key=value ...] [--json]\n"
             "  Checks the config's datasets with the tokenizer alone (no model weights): registry entries and files, rows,\n"
             "  bad rows grouped by reason, sharegpt role tags, token lengths against cutoff_len, and the first examples\n"
             "  rendered through the chat template with supervised tokens marked [[...]]. Exit code 2 when a dataset is unusable.")
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    if args[0] != "check":
        from tuneforge import TuneforgeError

        raise TuneforgeError(f"unknown `tuneforge data` subcommand `{args[0]}`; use `tuneforge data check` (--help for usage)")
    if args[1:2] and args[1] in ("-h", "--help"):
        print(usage)
        return 0
    import json

    from tuneforge import config
    from tuneforge.data import doctor

    path, overrides = _split_args(args[1:])
    json_out = any(item.partition("=")[0] == "json" for item in overrides)
    cfg = config.load(path, [item for item in overrides if item.partition("=")[0] != "json"], purpose="infer")
    cfg = config.resolve(cfg, quiet=True)
    from tuneforge import stages

    stage = stages.STAGES.get(cfg.method.stage)
    report = doctor.run(cfg, kind=stage.data_kind if stage else "supervised")
    print(json.dumps(report) if json_out else doctor.render(report))
    error = doctor.failure(report)
    if error is not None:
        raise error
    return 0


def cmd_version(args: list[str]) -> int:
    import tuneforge

    print(f"tuneforge {tuneforge.__version__}")
    return 0


def cmd_board(args: list[str]) -> int:
    """tuneforge board [--host 127.0.0.1] [--port 7860] [--auth user:pass | --auth-file F]: the web UI (board/cli.py)."""
    from tuneforge.board.cli import cmd_board as board

    return board(args)


COMMANDS = {"train": cmd_train, "estimate": cmd_estimate, "chat": cmd_chat, "api": cmd_api, "export": cmd_export,
            "version": cmd_version, "data": cmd_data, "eval": cmd_eval, "board": cmd_board}


def _preload_allocator(args: list[str]) -> None:
    """Re-execute this command once with tcmalloc/jemalloc/mimalloc preloaded when the run's `allocator` asks for it."""
    from tuneforge.config import parse_overrides, read_yaml
    from tuneforge.config.errors import ConfigError
    from tuneforge.train import allocator, onednn

    if args and args[0].startswith("--help"):
        return
    onednn.bound_primitive_cache()  # before torch loads; the re-executed process and torchrun's ranks inherit it
    path, overrides = _split_args(args)
    try:
        flat = {**(read_yaml(path) if path else {}), **parse_overrides(overrides)}
    except ConfigError:
        return  # the full config load reports it
    allocator.reexec(["train", *args], allocator.requested(flat))


def main(argv: list[str] | None = None) -> int:
    """Entry point. Called with argv (tests, other code) it never re-executes the process."""
    argv_from_process = argv is None
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
    from tuneforge.train.stop import EXIT_CODE as STOPPED, RunStopped

    try:
        if argv_from_process and command == "train":
            _preload_allocator(rest)
        return COMMANDS[command](rest)
    except RunStopped as e:  # a stop asked for (SIGTERM): not an error; the checkpoint resumes it
        print(str(e), file=sys.stderr)
        return STOPPED
    except TuneforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; checkpoints already written are kept (resume_from_checkpoint: auto continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
