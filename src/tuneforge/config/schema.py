"""The typed sections of a run config. Flat YAML keys map onto these fields by name."""

import importlib.util
from dataclasses import dataclass
from typing import Literal

from tuneforge.config.fields import field


@dataclass
class ModelSection:
    """Which model and tokenizer to load, and how."""

    model_name_or_path: str = field("smollm2-135m-instruct", help="HF folder, .gguf file, alias, or a hub id already in the local cache.")
    adapter_name_or_path: str | None = field(None, help="A saved LoRA adapter folder to continue training from.")
    trust_remote_code: bool = field(False, help="Run model code shipped with the checkpoint; only for models you trust.")
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        "auto", help="Weight dtype. auto: bf16/fp16 on GPU per the bf16/fp16 flags, float32 on CPU (the log says when bfloat16 "
                "is faster: LoRA on a CPU with AMX/AVX512-BF16, ~1.5x; opt in with torch_dtype: bfloat16).")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = field(
        "sdpa", help="Attention kernel; sdpa is fastest on CPU.")
    cache_dir: str | None = field(None, help="Where converted GGUF models and tokenized datasets are cached (default ~/.cache/tuneforge).")
    quantization_bit: int | None = field(None, help="Load the frozen base in 4 or 8 bits with bitsandbytes (QLoRA); adapters train on top.")
    quantization_method: Literal["bnb", "bitsandbytes"] = field("bnb", help="Quantization backend; bitsandbytes.")
    quantization_type: Literal["nf4", "fp4"] = field("nf4", help="4-bit data type: nf4 (NormalFloat, for normally distributed weights) or fp4.")
    double_quantization: bool = field(True, help="Quantize the 4-bit block constants too (saves ~0.37 bits per parameter).")

    def validate(self) -> list[str]:
        problems = []
        if not self.model_name_or_path:
            problems.append("model_name_or_path is empty; give a model folder, a .gguf file or `smollm2-135m-instruct`")
        if self.quantization_bit not in (None, 4, 8):
            problems.append(f"quantization_bit must be 4 or 8 (got {self.quantization_bit}); remove it to train unquantized")
        elif self.quantization_bit and importlib.util.find_spec("bitsandbytes") is None:
            problems.append("quantization_bit needs bitsandbytes: pip install 'tuneforge[quant]' (or pip install bitsandbytes)")
        return problems


@dataclass
class DataSection:
    """Which datasets to use and how to turn them into training rows."""

    dataset: list[str] = field([], help="Dataset names from dataset_info.json, or file paths, comma-separated.")
    dataset_dir: str = field("data", help="Folder holding dataset_info.json and the dataset files.")
    eval_dataset: list[str] = field([], help="Datasets used only for evaluation.")
    template: str = field("auto", help="Chat template: auto (the tokenizer's own), chatml, llama3 or alpaca.")
    cutoff_len: int = field(2048, help="Maximum tokens per example; longer ones are truncated.")
    max_samples: int | None = field(None, help="Use at most this many rows of each dataset.")
    val_size: float = field(0.0, help="Held-out share (<1) or count (>=1) of the training rows for evaluation.")
    train_on_prompt: bool = field(False, help="Also compute the loss on prompt tokens.")
    mask_history: bool = field(False, help="Compute the loss on the last assistant turn only.")
    packing: bool | None = field(
        None, help="Pack each batch's examples into one row without padding; positions restart and no token attends across "
                   "examples (exact). Default: on for every method that keeps it exact (all but prefix and prompt tuning).")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = field("concat", help="How several datasets are mixed.")
    interleave_probs: list[float] | None = field(None, help="Sampling probabilities per dataset for interleaving.")
    strict: bool = field(False, help="Fail on the first malformed row instead of skipping and reporting them.")
    overwrite_cache: bool = field(False, help="Re-tokenize even if a cached copy of the same data exists.")
    preprocessing_num_workers: int | None = field(None, help="Processes used for tokenization.")
    streaming: bool = field(False, help="Read the datasets lazily instead of loading and caching them whole (corpora larger "
                                        "than memory); needs max_steps; val_size must be a row count.")
    buffer_size: int = field(16384, help="With streaming: examples held in the shuffle buffer.")
    seed: int = field(42, help="Seed for shuffling, splitting and interleaving data (also the training seed).")

    def validate(self) -> list[str]:
        from tuneforge.data.templates import known_templates

        problems = []
        if self.template not in known_templates():
            from tuneforge.config.errors import did_you_mean

            problems.append(f"template `{self.template}` is unknown{did_you_mean(self.template, known_templates())}; use auto "
                            f"(the tokenizer's own) or one of {', '.join(sorted(known_templates()))}")
        if self.cutoff_len <= 0:
            problems.append(f"cutoff_len must be > 0 (got {self.cutoff_len})")
        if self.max_samples is not None and self.max_samples <= 0:
            problems.append(f"max_samples must be > 0 (got {self.max_samples}); remove it to use every row")
        if self.val_size < 0 or (self.val_size >= 1 and self.val_size != int(self.val_size)):
            problems.append(f"val_size must be a share in [0, 1) or a whole number of rows (got {self.val_size})")
        if self.buffer_size <= 0:
            problems.append(f"buffer_size must be > 0 (got {self.buffer_size})")
        if self.streaming and 0 < self.val_size < 1:
            problems.append(f"val_size must be a number of rows with streaming (the first rows are held out), not a share "
                            f"(got {self.val_size})")
        if self.interleave_probs is not None:
            if self.mix_strategy == "concat":
                problems.append("interleave_probs needs mix_strategy: interleave_under or interleave_over")
            elif len(self.interleave_probs) != len(self.dataset):
                problems.append(f"interleave_probs has {len(self.interleave_probs)} values for {len(self.dataset)} datasets; give one per dataset")
            elif abs(sum(self.interleave_probs) - 1.0) > 1e-6 or min(self.interleave_probs) < 0:
                problems.append(f"interleave_probs must be non-negative and sum to 1 (got {self.interleave_probs})")
        return problems


@dataclass
class MethodSection:
    """Which stage runs and which fine-tuning method decides the trainable parameters."""

    stage: str = field("sft", help="Training stage: what data it reads and what it optimises (choices: the registered stages).")
    finetuning_type: str = field("lora", help="Fine-tuning method: which parameters train (choices: the registered methods).")
    memory_check: bool = field(True, help="Refuse to start when the memory estimate is far above the memory available.")
    supervised_logits_only: bool = field(
        True, help="Project onto the vocabulary only where labels are supervised, in chunks (same loss, less time and memory).")
    allocator: Literal["auto", "tcmalloc", "jemalloc", "mimalloc", "system"] = field(
        "auto", help="malloc for `tuneforge train`: auto uses tcmalloc or jemalloc when the system has it, else mimalloc "
                     "from the cmeel-mimalloc wheel (faster, less fragmentation on the CPU); system keeps glibc's.")
    llamafactory_defaults: bool | None = field(
        None, help="Apply LLaMA-Factory's defaults where they differ from tuneforge's (activation checkpointing on unless "
                   "disable_gradient_checkpointing: true). Default: on for an LLaMA-Factory config (one with `do_train` or "
                   "keys only LLaMA-Factory knows); the run logs every default it applied.")
    # Several processes (`tuneforge train` starts them through torch.distributed.run; LLaMA-Factory reads these from
    # the NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT environment variables instead)
    nproc_per_node: int = field(1, help="Processes on this machine (one per GPU); above 1, `tuneforge train` launches itself "
                                        "through torch.distributed.run. Ignored under torchrun or accelerate launch.")
    nnodes: int = field(1, help="Machines in the job; run the same command on each with its own node_rank.")
    node_rank: int = field(0, help="This machine's index among nnodes (0 is the one at master_addr).")
    master_addr: str = field("127.0.0.1", help="Address of the node_rank 0 machine, reachable from every node.")
    master_port: int | None = field(None, help="Free TCP port on master_addr for the rendezvous (default: a free port "
                                               "on one machine, 29500 across several).")
    watchdog_timeout_s: float = field(900.0, help="With several processes: when no training step finishes for this "
                                                  "long, every rank dumps its Python stacks (stderr and output_dir/"
                                                  "watchdog-rank<N>.txt) and the job ends naming the likely cause; "
                                                  "0 turns it off.")

    def validate(self) -> list[str]:
        problems = []
        for key in ("nproc_per_node", "nnodes"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1 (got {getattr(self, key)})")
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            problems.append(f"node_rank must be in 0..{max(self.nnodes, 1) - 1} for nnodes {self.nnodes} (got {self.node_rank})")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            problems.append(f"master_port must be a TCP port, 1 to 65535 (got {self.master_port})")
        if self.watchdog_timeout_s < 0:
            problems.append(f"watchdog_timeout_s must be >= 0 seconds, 0 turns the watchdog off (got {self.watchdog_timeout_s})")
        return problems


@dataclass
class OutputSection:
    """Where the run writes, and what it keeps."""

    output_dir: str = field("", help="Folder for checkpoints, the final adapter or model, logs and plots.")
    overwrite_output_dir: bool = field(False, help="Allow writing into a folder that holds a finished run.")
    resume_from_checkpoint: str | None = field(None, help="A checkpoint folder, or `auto` for the newest one in output_dir.")
    plot_loss: bool = field(True, help="Save a loss-curve PNG in output_dir.")

    def validate(self) -> list[str]:
        if not self.output_dir:
            return ["output_dir is missing; add `output_dir: saves/my-run` (or `output_dir=saves/my-run` on the command line)"]
        return []


@dataclass
class GenerationSection:
    """Decoding settings for chat, the API server and the demo (LLaMA-Factory's names)."""

    temperature: float = field(0.7, help="Sampling temperature; 0 means greedy decoding.")
    top_p: float = field(0.9, help="Nucleus sampling: keep the smallest token set with this much probability.")
    top_k: int = field(50, help="Sample only among the k most likely tokens (0: no limit).")
    max_new_tokens: int = field(512, help="Most tokens generated per reply.")
    repetition_penalty: float = field(1.0, help="Above 1 discourages repeating tokens.")
    default_system: str | None = field(None, help="System prompt used when a conversation has none.")

    def validate(self) -> list[str]:
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (got {self.top_k})")
        if self.max_new_tokens <= 0:
            problems.append(f"max_new_tokens must be > 0 (got {self.max_new_tokens})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        return problems


@dataclass
class ExportSection:
    """Merging an adapter into its base, saving a standalone model folder or GGUF, and checking it against the trained model."""

    export_dir: str = field("", help="Folder for the merged model (safetensors, tokenizer, chat template) or the GGUF.")
    export_format: Literal["hf", "gguf"] = field(
        "hf", help="hf: a Hugging Face folder (safetensors); gguf: one model.gguf for llama.cpp/Ollama (Llama, Mistral, Qwen 2/3).")
    export_size: float = field(5.0, help="Largest safetensors shard, in GB (export_format hf).")
    export_dtype: Literal["float32", "bfloat16", "float16"] = field("bfloat16", help="Weight dtype of the exported model (export_format hf).")
    gguf_quantization: Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = field(
        "f16", help="GGUF weight type (export_format gguf); q4/q5 keep embeddings and output at q8_0, norms stay f32.")
    export_ollama: bool = field(False, help="Also write an Ollama Modelfile built from the chat template (FROM ./model.gguf for gguf).")
    export_overwrite: bool = field(False, help="Replace an existing, non-empty export_dir.")
    export_verify: Literal["error", "warn", "off"] = field(
        "error", help="Check the export against base + adapter on probe chats (answers, logits, special tokens, chat template) "
                      "and write export_report.json; error: a mismatch fails the export, warn: keep it with the report, "
                      "off: no check.")
    export_probe_file: str = field("", help="JSON list of probe questions or chats for the export check (default: 3 built-in chats).")
    export_probe_tokens: int = field(24, help="Greedy tokens generated per probe chat in the export check.")

    def validate(self) -> list[str]:
        problems = [f"export_size must be > 0 GB (got {self.export_size})"] if self.export_size <= 0 else []
        if self.export_probe_tokens <= 0:
            problems.append(f"export_probe_tokens must be > 0 (got {self.export_probe_tokens})")
        if self.export_format == "gguf" and importlib.util.find_spec("gguf") is None:
            problems.append("export_format gguf needs the gguf package: pip install gguf")
        return problems


@dataclass
class EvalSection:
    """`tuneforge eval` and `eval_before_after`: multiple-choice tasks, generation metrics and perplexity (LLaMA-Factory's
    evaluation keys where it had one)."""

    task: str | None = field(None, help="Multiple-choice task folder under task_dir, as <name> or <name>_<split> (mmlu_test, "
                                        "ceval_validation, cmmlu_test); leave it out when task_dir is one task's folder.")
    task_dir: str = field("evaluation", help="Folder holding the task folders, or one task's folder (with dev/, val/, test/ "
                                             "of <subject>_<split>.csv files); giving it turns multiple choice on.")
    split: str = field("test", help="Which split folder of the task is scored (dev, val/validation, test); a task name's "
                                    "_<split> suffix wins.")
    n_shot: int = field(5, help="Solved examples from the subject's dev split put before each question.")
    lang: Literal["en", "zh"] = field("en", help="Prompt language: en (the MMLU prompt) or zh (the C-Eval prompt).")
    batch_size: int = field(4, help="Sequences scored or generated at once.")
    save_dir: str | None = field(None, help="Folder for results.json and generated_predictions.jsonl (default: output_dir "
                                            "when set; otherwise results are only printed).")
    overwrite_save_dir: bool = field(False, help="Replace a save_dir that already holds files.")
    predict: bool = field(False, help="Generate greedily for the held-out rows (eval_dataset, or dataset with val_size) and "
                                      "score BLEU-4, ROUGE-1/2/L and exact match.")
    perplexity_dataset: list[str] = field([], help="Plain-text datasets (names or files, as for stage pt) whose "
                                                   "perplexity is measured.")
    eval_before_after: bool = field(False, help="With `tuneforge train`: evaluate before and after training (these eval "
                                                "keys), write output_dir/eval_before and eval_after, print them side by side.")

    def validate(self) -> list:
        problems = []
        if self.n_shot < 0:
            problems.append(f"n_shot must be >= 0 (got {self.n_shot})")
        if self.batch_size <= 0:
            problems.append(f"batch_size must be > 0 (got {self.batch_size})")
        if not self.split.strip():
            problems.append("split is empty; use test, val or dev")
        return problems

    def validate_run(self, given: set[str], data) -> list:
        """For an evaluation that will run: something to evaluate, and held-out rows for predict."""
        if not (self.task or "task_dir" in given or self.predict or self.perplexity_dataset or "do_predict" in given):
            return [("task", "nothing to evaluate: set task/task_dir (multiple choice), predict: true (generation metrics) "
                             "or perplexity_dataset")]
        if self.predict and not data.eval_dataset and not (data.dataset and data.val_size):
            return [("predict", "predict needs held-out rows: set eval_dataset, or dataset with val_size")]
        return []
