"""`python -m llmemb_cli`: the `llmemb` command without the installed script."""
from llmemb_cli.main import app

app(prog_name="llmemb")
