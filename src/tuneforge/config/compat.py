"""LLaMA-Factory key compatibility: renamed keys, and keys we accept but do not implement (one warning)."""

from typing import Any

# Older transformers names still found in LLaMA-Factory configs -> (new name, value mapping).
RENAMED: dict[str, tuple[str, Any]] = {
    "evaluation_strategy": ("eval_strategy", None),
    "warmup_ratio": ("warmup_steps", float),  # transformers 5 reads a float < 1 in warmup_steps as a ratio
    "group_by_length": ("train_sampling_strategy", lambda v: "group_by_length" if v else "random"),
    "flash_attn": ("attn_implementation", lambda v: {"fa2": "flash_attention_2", "disabled": "eager"}.get(v, "sdpa")),
    "lisa_activated_layers": ("lisa_layers", None),
    "lisa_interval_steps": ("lisa_interval", None),
    "infer_dtype": ("torch_dtype", lambda v: "auto" if v in ("auto", None) else {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(v, v)),
}

# Keys LLaMA-Factory (0.9.x) or older transformers know that tuneforge does not act on (yet).
# They are accepted with one warning so a LLaMA-Factory YAML runs unchanged.
LLAMAFACTORY_ONLY = set("""
adapter_folder add_special_tokens add_tokens apollo_layerwise apollo_proj apollo_proj_type apollo_rank apollo_scale
apollo_scale_front apollo_scale_type apollo_target apollo_update_interval audio_sampling_rate badam_mask_mode
badam_mode badam_start_block badam_switch_interval badam_switch_mode badam_update_ratio badam_verbose buffer_size
compute_accuracy create_new_adapter crop_to_patches disable_gradient_checkpointing disable_shuffling
disable_version_check do_sample dpo_label_smoothing enable_liger_kernel enable_thinking eval_num_beams
eval_on_each_dataset export_device export_hub_model_id export_legacy_format export_quantization_bit
export_quantization_dataset export_quantization_maxlen export_quantization_nsamples finetuning_args
freeze_language_model freeze_multi_modal_projector freeze_trainable_modules_regex freeze_vision_tower hf_hub_token
image_do_pan_and_scan image_max_pixels image_min_pixels image_resolution include_effective_tokens_per_second
include_tokens_per_second infer_backend kt_optimize_rule kto_chosen_weight kto_rejected_weight length_penalty
logging_dir lora_bf16_mode lora_target_modules loraplus_lr_embedding low_cpu_mem_usage mixture_of_depths
model_max_length model_revision moe_aux_loss_coef ms_hub_token neat_packing new_special_tokens num_beams
offload_folder om_hub_token overwrite_cache_dir pissa_convert plot_loss_dir ppo_buffer_size ppo_epochs ppo_score_norm
ppo_target ppo_whiten_rewards predict_with_generate pref_bco_weight pref_beta pref_ftx pref_loss print_param_status
quantization_device_map ray_init_kwargs ray_num_workers ray_run_name ray_storage_filesystem ray_storage_path
resize_vocab reward_model reward_model_adapters reward_model_quantization_bit reward_model_type rope_scaling
save_safetensors shift_attn simpo_gamma skip_special_tokens split streaming swanlab_api_key swanlab_lark_secret
swanlab_lark_webhook_url swanlab_logdir swanlab_mode swanlab_project swanlab_run_name swanlab_workspace
tokenized_path tool_format train_from_scratch train_mm_proj_only upcast_layernorm upcast_lmhead_output use_adam_mini
use_apollo use_audio_in_video use_badam use_fast_tokenizer use_kt use_llama_pro use_muon use_reentrant_gc use_swanlab
use_unsloth use_unsloth_gc use_v1_kernels video_fps video_max_pixels video_maxlen video_min_pixels vllm_config
vllm_enforce_eager vllm_gpu_util vllm_max_lora_rank vllm_maxlen
""".split())


def normalize(flat: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """LLaMA-Factory switches that choose a method here: `use_galore: true` with full fine-tuning is
    `finetuning_type: galore`. Returns the new dict and one note per change (logged by the loader)."""
    flat, notes = dict(flat), []
    if "use_galore" in flat:
        on = flat.pop("use_galore")
        if on in (True, "true", "True", 1):
            if flat.get("finetuning_type", "lora") in ("full", "galore"):
                flat["finetuning_type"] = "galore"
                notes.append("use_galore: true with finetuning_type: full -> finetuning_type: galore")
            else:
                from tuneforge.config.errors import ConfigError

                raise ConfigError([f"use_galore: true trains all weights with GaLore; it needs finetuning_type: full "
                                   f"(got `{flat.get('finetuning_type', 'lora')}`), or write finetuning_type: galore"])
    return flat, notes
