"""The flow a fork server rehearses with (engine.runner._rehearsal): a run that does nothing."""

from engine import flow


@flow(name="sluice-fork-rehearsal")
def rehearsal() -> None:
    return None
