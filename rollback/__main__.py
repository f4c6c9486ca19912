from rollback.cli import run

run()
