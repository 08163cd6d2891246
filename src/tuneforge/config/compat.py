"""LLaMA-Factory key compatibility: renamed keys, and keys we accept but do not implement (one warning)."""

from typing import Any

# Older transformers names still found in LLaMA-Factory configs -> (new name, value mapping).
RENAMED: dict[str, tuple[str, Any]] = {
    "evaluation_strategy": ("eval_strategy", None),
    "warmup_ratio": ("warmup_steps", float),  # transformers 5 reads a float < 1 in warmup_steps as a ratio
    "group_by_length": ("train_sampling_strategy", lambda v: "group_by_length" if v else "random"),
    "flash_attn": ("attn_implementation", lambda v: {"fa2": "flash_attention_2", "disabled": "eager"}.get(v, "sdpa")),
    # LLaMA-Factory checkpoints activations unless told not to
    "disable_gradient_checkpointing": ("gradient_checkpointing", lambda v: not v),
    "predict_with_generate": ("predict", None),  # LLaMA-Factory's switch for generation metrics on the eval rows
    "infer_dtype": ("torch_dtype", lambda v: "auto" if v in ("auto", None) else {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(v, v)),
}

# Keys LLaMA-Factory (0.9.x) or older transformers know that tuneforge does not act on (yet).
# They are accepted with one warning so a LLaMA-Factory YAML runs unchanged.
LLAMAFACTORY_ONLY = set("""
adapter_folder add_special_tokens add_tokens apollo_layerwise apollo_proj apollo_proj_type apollo_rank apollo_scale
apollo_scale_front apollo_scale_type apollo_target apollo_update_interval audio_sampling_rate badam_mask_mode
badam_mode badam_start_block badam_switch_interval badam_switch_mode badam_update_ratio badam_verbose
compute_accuracy create_new_adapter crop_to_patches disable_shuffling
disable_version_check do_sample dpo_label_smoothing enable_liger_kernel enable_thinking eval_num_beams
eval_on_each_dataset export_device export_hub_model_id export_legacy_format export_quantization_bit
export_quantization_dataset export_quantization_maxlen export_quantization_nsamples finetuning_args
freeze_language_model freeze_multi_modal_projector freeze_trainable_modules_regex freeze_vision_tower hf_hub_token
image_do_pan_and_scan image_max_pixels image_min_pixels image_resolution include_effective_tokens_per_second
include_tokens_per_second infer_backend kt_optimize_rule kto_chosen_weight kto_rejected_weight length_penalty
logging_dir lora_bf16_mode lora_target_modules loraplus_lr_embedding low_cpu_mem_usage mixture_of_depths
model_max_length model_revision moe_aux_loss_coef ms_hub_token neat_packing new_special_tokens num_beams
offload_folder om_hub_token overwrite_cache_dir pissa_convert plot_loss_dir
pref_bco_weight pref_beta pref_loss print_param_status
quantization_device_map ray_init_kwargs ray_num_workers ray_run_name ray_storage_filesystem ray_storage_path
resize_vocab reward_model_adapters reward_model_quantization_bit rope_scaling
save_safetensors shift_attn skip_special_tokens swanlab_api_key swanlab_lark_secret
swanlab_lark_webhook_url swanlab_logdir swanlab_mode swanlab_project swanlab_run_name swanlab_workspace
tokenized_path tool_format train_from_scratch train_mm_proj_only upcast_layernorm upcast_lmhead_output use_adam_mini
use_apollo use_audio_in_video use_badam use_fast_tokenizer use_kt use_llama_pro use_muon use_reentrant_gc use_swanlab
use_unsloth use_unsloth_gc use_v1_kernels video_fps video_max_pixels video_maxlen video_min_pixels vllm_config
vllm_enforce_eager vllm_gpu_util vllm_max_lora_rank vllm_maxlen
""".split())


# Our keys that are also LLaMA-Factory's names (every TrainingArguments name is one too); `describe()` marks them.
LLAMAFACTORY_NAMES = set("""
model_name_or_path adapter_name_or_path trust_remote_code cache_dir quantization_bit quantization_method quantization_type
double_quantization dataset dataset_dir eval_dataset template cutoff_len max_samples val_size train_on_prompt mask_history
packing mix_strategy interleave_probs overwrite_cache preprocessing_num_workers stage finetuning_type plot_loss output_dir
overwrite_output_dir resume_from_checkpoint lora_rank lora_alpha lora_dropout lora_target additional_target use_dora
use_rslora pissa_init pissa_iter loraplus_lr_ratio freeze_trainable_layers freeze_trainable_modules freeze_extra_modules
galore_target galore_rank galore_update_interval galore_scale galore_layerwise temperature top_p top_k max_new_tokens
repetition_penalty default_system export_dir export_size seed
task task_dir split n_shot lang batch_size save_dir
ppo_buffer_size ppo_epochs ppo_score_norm ppo_target ppo_whiten_rewards reward_model reward_model_type
""".split())


def is_llamafactory_config(given: set[str]) -> bool:
    """A config written for LLaMA-Factory: it has `do_train` (every LLaMA-Factory recipe does) or keys only it knows."""
    return "do_train" in given or bool(given & (LLAMAFACTORY_ONLY | set(RENAMED)))


def normalize(flat: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """LLaMA-Factory switches that choose or configure a method here (each method's own `llamafactory` hook, e.g.
    `use_galore: true` with full fine-tuning is `finetuning_type: galore`). Returns the new dict and one note per
    change (logged by the loader)."""
    from tuneforge.methods.registry import METHODS

    flat, notes = dict(flat), []
    if flat.get("template") == "fewshot":  # LLaMA-Factory's plain-text template for its evaluator
        del flat["template"]
        notes.append("template: fewshot is LLaMA-Factory's evaluation template; multiple-choice prompts here are plain text "
                     "already, so the tokenizer's own template (auto) is kept for everything else")
    for method in METHODS.values():
        if method.llamafactory is not None:
            flat, more = method.llamafactory(flat)
            notes += more
    return flat, notes
