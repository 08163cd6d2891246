"""The Board's UI text in English and Chinese. gradio's I18n translates it in the browser, following the browser's
language (gradio's Settings panel, bottom of the page, switches it). Config key names stay as the YAML spells them."""

EN = {
    "title": "## tuneforge Board",
    "subtitle": "Runs are separate `tuneforge train` processes: closing or reloading this page does not stop them.",
    "tab_train": "Train", "tab_monitor": "Monitor", "tab_chat": "Chat", "tab_evaluate": "Evaluate", "tab_export": "Export",
    "sec_model": "Model", "sec_data": "Data", "sec_method": "Method options", "sec_train": "Hyperparameters",
    "sec_train_more": "All training arguments", "sec_output": "Output", "sec_generation": "Generation (chat)",
    "sec_export": "Export keys", "sec_eval": "Evaluation keys",
    "estimate": "Memory estimate", "fit": "Configurations that fit this machine (`--fit`)",
    "preview_data": "Preview data", "data_preview": "First examples as the model sees them (supervised tokens highlighted)",
    "preview_yaml": "Preview YAML and CLI command", "yaml": "YAML", "cli": "CLI command",
    "config_path": "Config file (YAML; LLaMA-Factory YAMLs work)", "save": "Save config", "load": "Load config",
    "start": "Start", "stop": "Stop", "status": "Status", "errors": "Problems",
    "run": "Run", "runs": "Runs", "refresh": "Refresh", "progress": "Progress",
    "loss_plot": "Loss", "lr_plot": "Learning rate", "tps_plot": "Tokens/s", "stage_plot": "Stage metrics", "log": "Log tail",
    "compare": "Compare two runs", "compare_a": "Run A", "compare_b": "Run B", "config_diff": "Config differences",
    "base_model": "Base model", "adapter": "Adapter (folder; a finished run)", "message": "Message", "send": "Send",
    "clear": "Clear", "chat_settings": "Generation settings",
    "eval_args": "Evaluation keys (key=value, one per line)", "run_eval": "Evaluate", "eval_result": "Result",
    "export_dir": "Export folder", "export_format": "Format", "run_export": "Export", "export_result": "Result",
}

ZH = {
    "title": "## tuneforge 控制台",
    "subtitle": "每次训练都是独立的 `tuneforge train` 进程：关闭或刷新本页面不会停止训练。",
    "tab_train": "训练", "tab_monitor": "监控", "tab_chat": "对话", "tab_evaluate": "评估", "tab_export": "导出",
    "sec_model": "模型", "sec_data": "数据", "sec_method": "方法选项", "sec_train": "超参数",
    "sec_train_more": "全部训练参数", "sec_output": "输出", "sec_generation": "生成（对话）",
    "sec_export": "导出参数", "sec_eval": "评估参数",
    "estimate": "显存/内存估算", "fit": "适合本机的配置（`--fit`）",
    "preview_data": "预览数据", "data_preview": "模型看到的前几条样本（高亮为监督部分）",
    "preview_yaml": "预览 YAML 和命令行", "yaml": "YAML", "cli": "命令行",
    "config_path": "配置文件（YAML；兼容 LLaMA-Factory）", "save": "保存配置", "load": "加载配置",
    "start": "开始", "stop": "停止", "status": "状态", "errors": "问题",
    "run": "运行", "runs": "运行列表", "refresh": "刷新", "progress": "进度",
    "loss_plot": "损失", "lr_plot": "学习率", "tps_plot": "每秒词元数", "stage_plot": "阶段指标", "log": "日志末尾",
    "compare": "比较两次运行", "compare_a": "运行 A", "compare_b": "运行 B", "config_diff": "配置差异",
    "base_model": "基础模型", "adapter": "适配器（文件夹；已完成的运行）", "message": "消息", "send": "发送",
    "clear": "清空", "chat_settings": "生成参数",
    "eval_args": "评估参数（每行一个 key=value）", "run_eval": "评估", "eval_result": "结果",
    "export_dir": "导出文件夹", "export_format": "格式", "run_export": "导出", "export_result": "结果",
}


def make(lang: str | None = None):
    """The gr.I18n for the Board. `lang` ("en" or "zh") forces one language whatever the browser says."""
    import gradio as gr

    if lang == "zh":
        return gr.I18n(en=ZH, zh=ZH)
    if lang == "en":
        return gr.I18n(en=EN, zh=EN)
    return gr.I18n(en=EN, zh=ZH)
