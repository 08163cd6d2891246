"""The Chat tab: a base model plus any adapter (a finished run's folder), streamed through the same ChatEngine the
CLI's `tuneforge chat` uses. One engine is kept loaded; choosing another model or adapter replaces it."""

import html
import threading

_ENGINE: dict = {}
_LOCK = threading.Lock()


def engine_for(model: str, adapter: str | None):
    """The ChatEngine for (model, adapter), loaded once (the config is validated first, like `tuneforge chat`)."""
    from tuneforge import config, preflight
    from tuneforge.infer import ChatEngine

    key = (model, adapter or None)
    with _LOCK:
        if _ENGINE.get("key") != key:
            _ENGINE.clear()
            cfg = config.load(None, {"model_name_or_path": model, **({"adapter_name_or_path": adapter} if adapter else {})},
                              purpose="infer")
            preflight.check_model(cfg)
            _ENGINE.update(key=key, engine=ChatEngine.from_config(cfg))
        return _ENGINE["engine"]


def finished_outputs(runs) -> list[str]:
    try:
        return [j.output_dir for j in runs.list() if j.status == "finished"]
    except Exception:  # a broken runs folder: the field still takes a typed path
        return []


def plain(content) -> str:
    """A Chatbot message's content as text (gradio gives back a list of typed parts)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def build(gr, t) -> dict:
    with gr.Row():
        model = gr.Textbox(label=t("base_model"), value="smollm2-135m-instruct", elem_id="tf-chat-model", scale=2)
        adapter = gr.Dropdown(label=t("adapter"), choices=[], value=None, allow_custom_value=True, elem_id="tf-chat-adapter",
                              scale=3)
    with gr.Accordion(t("chat_settings"), open=False):
        with gr.Row():
            temperature = gr.Number(label="temperature", value=0.0, elem_id="tf-chat-temperature")
            max_new = gr.Number(label="max_new_tokens", value=64, precision=0, elem_id="tf-chat-max-new-tokens")
            system = gr.Textbox(label="default_system", value="", elem_id="tf-chat-system")
    bot = gr.Chatbot(elem_id="tf-chatbot", height=360)
    with gr.Row():
        msg = gr.Textbox(label=t("message"), elem_id="tf-chat-message", scale=4)
        send = gr.Button(t("send"), variant="primary", elem_id="tf-chat-send", scale=1)
        clear = gr.Button(t("clear"), elem_id="tf-chat-clear", scale=1)
    note = gr.Markdown("", elem_id="tf-chat-note")
    return dict(model=model, adapter=adapter, temperature=temperature, max_new=max_new, system=system, bot=bot, msg=msg,
                send=send, clear=clear, note=note)


def wire(gr, ui: dict, runs, tab) -> None:
    def on_tab(current):
        outs = finished_outputs(runs)
        return gr.update(choices=outs, value=current or (outs[0] if outs else None))

    tab.select(on_tab, inputs=ui["adapter"], outputs=ui["adapter"])

    def on_send(message, history, model, adapter, temperature, max_new, system):
        from tuneforge import TuneforgeError
        from tuneforge.infer import GenerationSettings

        history = [{"role": m["role"], "content": plain(m["content"])} for m in history or []]
        if not (message or "").strip():
            yield history, "", ""
            return
        history.append({"role": "user", "content": message})
        history.append({"role": "assistant", "content": ""})
        yield history, "", "loading the model..." if (model, adapter or None) != _ENGINE.get("key") else ""
        try:
            engine = engine_for(model.strip(), (adapter or "").strip() or None)
        except TuneforgeError as e:
            history.pop()
            yield history, message, f"**cannot load:** {html.escape(str(e))}"
            return
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": m["role"], "content": m["content"]} for m in history[:-1]]
        settings = GenerationSettings(temperature=float(temperature or 0), max_new_tokens=int(max_new or 64))
        text = ""
        for piece in engine.stream(messages, settings):
            text += piece
            history[-1] = {"role": "assistant", "content": text}
            yield history, "", ""
        yield history, "", ""

    ins = [ui["msg"], ui["bot"], ui["model"], ui["adapter"], ui["temperature"], ui["max_new"], ui["system"]]
    outs = [ui["bot"], ui["msg"], ui["note"]]
    ui["send"].click(on_send, inputs=ins, outputs=outs)
    ui["msg"].submit(on_send, inputs=ins, outputs=outs)
    ui["clear"].click(lambda: ([], ""), outputs=[ui["bot"], ui["note"]])
