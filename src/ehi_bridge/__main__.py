from ehi_bridge.cli import app

app()
