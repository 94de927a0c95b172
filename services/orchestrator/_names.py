"""Readable generated run names such as ``amber-heron``."""

from __future__ import annotations

import random

_ADJECTIVES = (
    "amber azure bold brave brisk calm clever cobalt coral crimson curious dapper "
    "eager early fancy fearless gentle golden graceful hardy honest humble ivory jade "
    "jolly keen lively lucky mellow merry misty nimble noble olive patient plucky "
    "proud quick quiet rapid ruby rustic sage scarlet serene silver sleek snowy "
    "solid spry steady sunny swift tidy tranquil vivid warm wise witty zesty"
).split()

_ANIMALS = (
    "albatross antelope badger beaver bison bobcat caribou cheetah condor cougar "
    "coyote crane dolphin dormouse eagle egret falcon ferret finch gazelle gecko "
    "gibbon heron ibex jackal jaguar kestrel koala lemur leopard lynx magpie marmot "
    "marten mink narwhal ocelot orca osprey otter owl panther pelican penguin puffin "
    "quail raven salmon seal sparrow stork swift tapir tern toucan walrus weasel wolf"
).split()


def run_name(rng: random.Random | None = None) -> str:
    pick = (rng or random).choice
    return f"{pick(_ADJECTIVES)}-{pick(_ANIMALS)}"
