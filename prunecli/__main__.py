from prunecli.cli import run

run()
