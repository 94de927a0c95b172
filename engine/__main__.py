"""``python -m engine``: execute one flow run by id (what a runner starts)."""

from engine.runner._process import exit_process, main

if __name__ == "__main__":
    exit_process(main())
