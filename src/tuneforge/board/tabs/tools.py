"""The Evaluate and Export tabs: the same library calls as `tuneforge eval` and `tuneforge export` (config.load with
the same purpose, then evaluate()/export_model()), with the base model and adapter taken from the Chat tab's fields."""

import os


def overrides(model: str, adapter: str | None, text: str) -> dict:
    """The config keys: model, adapter, then `key=value` lines (YAML scalars, like the CLI's overrides)."""
    from tuneforge.config import parse_overrides

    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out = {"model_name_or_path": model}
    if adapter:
        out["adapter_name_or_path"] = adapter
    out.update(parse_overrides(lines))
    return out


def run_eval(model: str, adapter: str | None, text: str) -> str:
    """`tuneforge eval` with these keys; the result table or the error."""
    from tuneforge import TuneforgeError, config, preflight
    from tuneforge.evaluate import evaluate, table

    try:
        cfg = config.load(None, overrides(model, adapter, text), purpose="eval")
        preflight.check_model(cfg)
        record = evaluate(cfg, save_dir=cfg.eval.save_dir or cfg.output.output_dir or None)
    except TuneforgeError as e:
        return f"error: {e}"
    return table(record)


def run_export(model: str, adapter: str | None, export_dir: str, fmt: str, text: str) -> str:
    """`tuneforge export` with these keys; the check's verdict and folder, or the error."""
    import json

    from tuneforge import TuneforgeError, config, preflight
    from tuneforge.export import export_model

    try:
        keys = {**overrides(model, adapter, text), "export_dir": export_dir, "export_format": fmt}
        cfg = config.load(None, keys, purpose="export")
        preflight.check_model(cfg)
        out = export_model(cfg)
    except TuneforgeError as e:
        return f"error: {e}"
    report = os.path.join(out, "export_report.json")
    verdict = ""
    if os.path.isfile(report):
        with open(report, encoding="utf-8") as fh:
            verdict = f"export check: {json.load(fh)['verdict']} (details: {report})\n"
    return f"{verdict}exported to {out}"


def build_eval(gr, t) -> dict:
    args = gr.Textbox(label=t("eval_args"), lines=5, value="task_dir=evaluation\ntask=mmlu_test\nn_shot=0",
                      elem_id="tf-eval-args")
    go = gr.Button(t("run_eval"), variant="primary", elem_id="tf-eval-run")
    out = gr.Textbox(label=t("eval_result"), lines=12, elem_id="tf-eval-result")
    return dict(args=args, go=go, out=out)


def build_export(gr, t) -> dict:
    with gr.Row():
        folder = gr.Textbox(label=t("export_dir"), value="saves/export", elem_id="tf-export-dir", scale=3)
        fmt = gr.Dropdown(label=t("export_format"), choices=["hf", "gguf"], value="hf", elem_id="tf-export-format", scale=1)
    args = gr.Textbox(label="key=value", lines=3, value="export_dtype=float32", elem_id="tf-export-args")
    go = gr.Button(t("run_export"), variant="primary", elem_id="tf-export-run")
    out = gr.Textbox(label=t("export_result"), lines=6, elem_id="tf-export-result")
    return dict(folder=folder, fmt=fmt, args=args, go=go, out=out)


def wire(gr, ev: dict, ex: dict, chat: dict) -> None:
    def do_eval(model, adapter, text, progress=gr.Progress()):
        progress(0, desc="evaluating (the model loads first)")
        return run_eval(model, adapter, text)

    def do_export(model, adapter, folder, fmt, text, progress=gr.Progress()):
        progress(0, desc="exporting (merge, save, check)")
        return run_export(model, adapter, folder, fmt, text)

    ev["go"].click(do_eval, inputs=[chat["model"], chat["adapter"], ev["args"]], outputs=ev["out"])
    ex["go"].click(do_export, inputs=[chat["model"], chat["adapter"], ex["folder"], ex["fmt"], ex["args"]], outputs=ex["out"])


__all__ = ["build_eval", "build_export", "run_eval", "run_export", "wire"]
