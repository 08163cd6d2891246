"""The Board: a gradio UI over the library (`tuneforge board`). It never trains in its own process: jobs.py starts
`tuneforge train` detached and follows its event log; series.py turns a run folder into plot data.

Import-light on purpose: importing `tuneforge.board` loads neither gradio nor torch (board/app.py does, when launched)."""
