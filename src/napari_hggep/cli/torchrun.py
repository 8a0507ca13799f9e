"""Commands that join torchrun's process group when started by it (a world of one otherwise)."""
from __future__ import annotations


def distributed_command(run):
    """A command that joins torchrun's process group when started by it (a world of one
    otherwise) and leaves it however the command ends."""

    def command(a) -> int:
        from ..distributed import init_distributed, shutdown

        dist, device = init_distributed(a.device)
        try:
            return run(a, dist, device)
        finally:
            shutdown(dist)

    return command
